# Two-stage Deformable DETR with iterative box refinement (47.0 box AP in mmdetection): the
# encoder proposes boxes and the 300 best become the decoder's reference boxes.
_base_ = 'deformable-detr-refine_r50_16xb2-50e_coco.py'
model = dict(as_two_stage=True)
