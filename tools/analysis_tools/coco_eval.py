"""Evaluate any COCO results file against its ground truth:
``python tools/analysis_tools/coco_eval.py ANN_FILE RESULTS_JSON [--metric bbox segm] [--json]``.

Prints pycocotools' 12-line summary per metric (computed by hotcoco unless ``--backend
pycocotools``: the same numbers, many times faster); ``--json`` prints instead one line
``{"bbox": [12 numbers], "segm": [...]}`` at full precision. The results are used as given, as
pycocotools' ``loadRes`` reads them (with a ``bbox`` in a result, its area is the box's, also
for ``segm``). Imports no torch, so it starts in a fraction of a second.
"""
import argparse
import json
import sys
import time

from rcnn_det.cocoeval import DEFAULT_BACKEND, EVAL_BACKENDS, evaluate


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='COCO mAP of a results file')
    parser.add_argument('ann_file', help='COCO ground-truth json')
    parser.add_argument('results', help='COCO results json (a list of detections)')
    parser.add_argument('--metric', nargs='+', choices=['bbox', 'segm'], default=['bbox'])
    parser.add_argument('--json', action='store_true',
                        help='print one json line {metric: [12 numbers]} and nothing else')
    parser.add_argument('--backend', choices=EVAL_BACKENDS, default=DEFAULT_BACKEND)
    return parser.parse_args()


def load_json(path: str, what: str):
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except FileNotFoundError:
        sys.exit(f'coco_eval.py: error: {what} not found: {path}')
    except json.JSONDecodeError as e:
        sys.exit(f'coco_eval.py: error: {what} {path} is not valid json: {e}')


def main() -> None:
    args = parse_args()
    gt = load_json(args.ann_file, 'ground-truth file')
    if not isinstance(gt, dict) or not {'images', 'annotations', 'categories'} <= set(gt):
        sys.exit(f'coco_eval.py: error: {args.ann_file} is not a COCO ground truth (a dict with '
                 'images, annotations and categories)')
    results = load_json(args.results, 'results file')
    if not isinstance(results, list) or not results:
        sys.exit(f'coco_eval.py: error: {args.results} holds no detections (expected a '
                 'non-empty list of COCO results)')
    if 'segm' in args.metric and 'segmentation' not in results[0]:
        sys.exit(f"coco_eval.py: error: --metric segm needs 'segmentation' in the results of "
                 f'{args.results}')
    stats = {}
    for metric in args.metric:
        start = time.perf_counter()
        evaluation = evaluate(gt, results, metric, args.backend)
        stats[metric] = [float(v) for v in evaluation.stats]
        if not args.json:
            print(f'{metric} ({args.backend}, {len(results)} results, {len(gt["images"])} '
                  f'images, {time.perf_counter() - start:.2f} s):\n{evaluation.summary}')
    if args.json:
        print(json.dumps(stats))


if __name__ == '__main__':
    main()
