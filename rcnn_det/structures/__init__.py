from .bbox import (bbox2roi, bbox_cxcywh_to_xyxy, bbox_flip, bbox_overlaps, bbox_xyxy_to_cxcywh,
                   box_area, clip_boxes, scale_boxes)
from .det_data_sample import DetDataSample, SampleList, meta_pairs, unpack_gt_instances
from .mask import crop_and_resize_masks, paste_masks

__all__ = ['DetDataSample', 'SampleList', 'unpack_gt_instances', 'bbox2roi', 'bbox_cxcywh_to_xyxy',
           'bbox_flip', 'bbox_overlaps', 'bbox_xyxy_to_cxcywh', 'box_area', 'clip_boxes',
           'crop_and_resize_masks', 'meta_pairs', 'paste_masks', 'scale_boxes']
