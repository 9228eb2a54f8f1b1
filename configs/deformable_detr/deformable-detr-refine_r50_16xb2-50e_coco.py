# Deformable DETR with iterative box refinement (46.2 box AP in mmdetection).
_base_ = 'deformable-detr_r50_16xb2-50e_coco.py'
model = dict(with_box_refine=True)
