"""COCO evaluation speed, hotcoco against pycocotools, start-up included:
``python tools/analysis_tools/benchmark_coco_eval.py [--num-images 2000] [--dets 100]``.

Writes a generated ground truth and results file (``rcnn_det.cocoeval.synthetic_case``: objects
of every area range, crowd regions, ``--dets`` detections per image with boxes and masks) to a
temporary folder, runs ``tools/analysis_tools/coco_eval.py --json --metric bbox segm`` on them
once per backend, in new processes, and prints each run's wall time, the speed-up and the
largest difference between the two backends' 24 numbers.
"""
import argparse
import json
import os.path as osp
import subprocess
import sys
import tempfile
import time

from rcnn_det.cocoeval import EVAL_BACKENDS, synthetic_case

COCO_EVAL = osp.join(osp.dirname(osp.abspath(__file__)), 'coco_eval.py')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='hotcoco against pycocotools')
    parser.add_argument('--num-images', type=int, default=2000)
    parser.add_argument('--dets', type=int, default=100, help='detections per image')
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    print(f'generating {args.num_images} images with {args.dets} detections each ...',
          flush=True)
    gt, results = synthetic_case(args.num_images, args.dets, seed=args.seed)
    numbers, seconds = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        gt_file, results_file = osp.join(folder, 'gt.json'), osp.join(folder, 'results.json')
        with open(gt_file, 'w') as f:
            json.dump(gt, f)
        with open(results_file, 'w') as f:
            json.dump(results, f)
        for backend in EVAL_BACKENDS:
            start = time.perf_counter()
            out = subprocess.run([sys.executable, COCO_EVAL, gt_file, results_file, '--metric',
                                  'bbox', 'segm', '--json', '--backend', backend],
                                 capture_output=True, text=True, check=True).stdout
            seconds[backend] = time.perf_counter() - start
            numbers[backend] = json.loads(out.strip().splitlines()[-1])
            print(f'{backend:12s} {seconds[backend]:7.2f} s (bbox and segm, start-up included)',
                  flush=True)
    fast, reference = EVAL_BACKENDS
    difference = max(abs(a - b) for metric in ('bbox', 'segm')
                     for a, b in zip(numbers[fast][metric], numbers[reference][metric]))
    print(f'{len(gt["annotations"])} objects ({sum(a["iscrowd"] for a in gt["annotations"])} '
          f'crowd), {len(results)} detections')
    print(f'speed-up {seconds[reference] / seconds[fast]:.1f}x; largest difference of the 24 '
          f'numbers: {difference:.1e}')


if __name__ == '__main__':
    main()
