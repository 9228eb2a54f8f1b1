"""Instance-mask math on plain tensors: RoI mask targets in, full-image masks out.

Shape letters: G ground-truth masks of one image, P RoIs, D detections, S the RoI mask size,
H x W an image. Boxes are xyxy float pixels of the frame the masks live in.

Both directions work in chunks so that no more than ``max_bytes`` of float full-image masks
exist at any time: a COCO image (1333 x 800) with 100 instances would otherwise need 430 MB.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

MAX_BYTES = 256 * 2 ** 20   # float working memory per chunk


def crop_and_resize_masks(masks: Tensor, boxes: Tensor, gt_inds: Tensor, size: int,
                          aligned: bool = True, max_bytes: int = MAX_BYTES) -> Tensor:
    """Each RoI's window of its ground-truth mask, resampled to S x S by RoIAlign.

    Args:
        masks: (G, H, W) uint8 or bool {0, 1}.
        boxes: (P, 4) RoIs; gt_inds: (P,) the mask of each RoI, in 0..G-1.
        size: S. ``aligned``: mmdetection's half-pixel alignment (torchvision: False).
    Returns:
        (P, S, S) float in [0, 1], the fraction of each bin the mask covers (mmdet and
        torchvision both average with an adaptive number of samples per bin).
    """
    targets = boxes.new_zeros((boxes.shape[0], size, size))
    if boxes.shape[0] == 0:
        return targets
    used, local = torch.unique(gt_inds, return_inverse=True)      # only the masks RoIs need
    bytes_per_mask = masks.shape[-2] * masks.shape[-1] * boxes.element_size()
    step = max(1, max_bytes // max(bytes_per_mask, 1))
    for start in range(0, used.shape[0], step):
        in_chunk = (local >= start) & (local < start + step)
        chunk = masks[used[start:start + step]][:, None].to(boxes.dtype)    # (g, 1, H, W)
        rois = torch.cat([(local[in_chunk] - start)[:, None].to(boxes.dtype), boxes[in_chunk]], 1)
        targets[in_chunk] = roi_align(chunk, rois, (size, size), 1.0, 0, aligned)[:, 0]
    return targets


def paste_masks(mask_probs: Tensor, boxes: Tensor, img_hw: tuple[int, int],
                threshold: float = 0.5, max_bytes: int = MAX_BYTES, mode: str = 'mmdet'
                ) -> Tensor:
    """Resample each RoI's S x S probability map into its box on an H x W image.

    The S x S map covers the box exactly (bin centres at box_x1 + (j + 0.5) * w / S), is
    bilinearly interpolated (zero outside the map) at every pixel centre from floor(x1) - 1 to
    ceil(x2) + 1 (and likewise in y), and is zero elsewhere: mmdetection's ``_do_paste_mask``
    on one box. Detections are processed in chunks, each over the union of its boxes only.

    ``mode='torchvision'`` pastes as torchvision's ``paste_masks_in_image`` does instead: the
    map is zero-padded to (S + 2) x (S + 2), the box scaled about its centre by (S + 2) / S and
    truncated to integers (x0, y0, x1, y1), and the padded map resized to the integer box's
    (y1 - y0 + 1) x (x1 - x0 + 1) pixels by ``interpolate``'s bilinear rule.

    Args:
        mask_probs: (D, S, S) float probabilities; boxes: (D, 4) in the image's pixels.
        img_hw: (H, W) of the image to paste into.
        threshold: >= 0 gives bool masks (prob >= threshold); < 0 gives uint8 probabilities
            scaled to 0..255.
        mode: 'mmdet' or 'torchvision'.
    Returns:
        (D, H, W) bool, or uint8 when ``threshold`` < 0.
    """
    if mode not in PASTE_MODES:
        raise ValueError(f'paste_masks: mode must be one of {sorted(PASTE_MODES)}, got {mode!r}')
    paste_region = PASTE_MODES[mode]
    height, width = int(img_hw[0]), int(img_hw[1])
    binary = threshold >= 0
    out = torch.zeros((mask_probs.shape[0], height, width), device=mask_probs.device,
                      dtype=torch.bool if binary else torch.uint8)
    if mask_probs.shape[0] == 0 or height == 0 or width == 0:
        return out
    # per pixel of the image: a sampling grid (2 floats), the sampled map (1 float), and the
    # row/column/threshold flags and grid_sample's scratch (counted as 1 more)
    step = max(1, max_bytes // (height * width * 4 * mask_probs.element_size()))
    for start in range(0, mask_probs.shape[0], step):
        chunk = slice(start, start + step)
        region, probs = paste_region(mask_probs[chunk], boxes[chunk], height, width)
        if probs is None:
            continue
        (y0, y1), (x0, x1) = region
        out[chunk, y0:y1, x0:x1] = probs >= threshold if binary else (probs * 255).to(torch.uint8)
    return out


def _paste_region(mask_probs: Tensor, boxes: Tensor, height: int, width: int
                  ) -> tuple[tuple[tuple[int, int], tuple[int, int]], Tensor | None]:
    """Probabilities of a chunk of masks over the pixels of its boxes' union (1 px margin).

    Returns ((y0, y1), (x0, x1)) and (d, y1 - y0, x1 - x0), or None when the union is empty.
    """
    boxes = boxes.to(mask_probs.dtype)
    x0 = max(int(math.floor(boxes[:, 0].min().item())) - 1, 0)
    y0 = max(int(math.floor(boxes[:, 1].min().item())) - 1, 0)
    x1 = min(int(math.ceil(boxes[:, 2].max().item())) + 1, width)
    y1 = min(int(math.ceil(boxes[:, 3].max().item())) + 1, height)
    if x1 <= x0 or y1 <= y0:
        return ((0, 0), (0, 0)), None
    bx0, by0, bx1, by1 = (c[:, None] for c in boxes.unbind(1))             # (d, 1) each
    # pixel centres in the box's normalised [-1, 1] frame
    xs = torch.arange(x0, x1, device=boxes.device, dtype=boxes.dtype) + 0.5
    ys = torch.arange(y0, y1, device=boxes.device, dtype=boxes.dtype) + 0.5
    gx = (xs - bx0) / (bx1 - bx0).clamp(min=1e-6) * 2 - 1                  # (d, w)
    gy = (ys - by0) / (by1 - by0).clamp(min=1e-6) * 2 - 1                  # (d, h)
    num, h, w = boxes.shape[0], gy.shape[1], gx.shape[1]
    grid = torch.stack([gx[:, None, :].expand(num, h, w), gy[:, :, None].expand(num, h, w)], -1)
    probs = F.grid_sample(mask_probs[:, None], grid, mode='bilinear', padding_mode='zeros',
                          align_corners=False)[:, 0]
    # each detection only within its own box's extent, whatever else shares the chunk
    cols = xs - 0.5
    rows = ys - 0.5
    col_in = (cols >= bx0.floor() - 1) & (cols < bx1.ceil() + 1)           # (d, w)
    row_in = (rows >= by0.floor() - 1) & (rows < by1.ceil() + 1)           # (d, h)
    return ((y0, y1), (x0, x1)), probs.mul_(row_in[:, :, None] & col_in[:, None, :])


def _paste_region_torchvision(mask_probs: Tensor, boxes: Tensor, height: int, width: int
                              ) -> tuple[tuple[tuple[int, int], tuple[int, int]], Tensor | None]:
    """``_paste_region`` with torchvision's rule (see ``paste_masks``)."""
    size = mask_probs.shape[-1]
    padded = F.pad(mask_probs, (1, 1, 1, 1))                               # (d, S + 2, S + 2)
    scale = (size + 2) / size
    centre = (boxes[:, :2] + boxes[:, 2:]) * 0.5
    half = (boxes[:, 2:] - boxes[:, :2]) * 0.5 * scale
    corners = torch.cat([centre - half, centre + half], 1).to(torch.int64)  # truncated
    x0, y0 = corners[:, 0].min().clamp(min=0).item(), corners[:, 1].min().clamp(min=0).item()
    x1 = min(corners[:, 2].max().item() + 1, width)
    y1 = min(corners[:, 3].max().item() + 1, height)
    if x1 <= x0 or y1 <= y0:
        return ((0, 0), (0, 0)), None
    cols = _interpolate_taps(torch.arange(x0, x1, device=boxes.device), corners[:, 0],
                             corners[:, 2], size + 2, mask_probs.dtype)
    rows = _interpolate_taps(torch.arange(y0, y1, device=boxes.device), corners[:, 1],
                             corners[:, 3], size + 2, mask_probs.dtype)
    (c0, c1, cw0, cw1, col_in), (r0, r1, rw0, rw1, row_in) = cols, rows
    dets = torch.arange(padded.shape[0], device=boxes.device)[:, None, None]

    def at(r: Tensor, c: Tensor) -> Tensor:                                # (d, h, w)
        return padded[dets, r[:, :, None], c[:, None, :]]

    probs = (rw0[:, :, None] * (cw0[:, None, :] * at(r0, c0) + cw1[:, None, :] * at(r0, c1))
             + rw1[:, :, None] * (cw0[:, None, :] * at(r1, c0) + cw1[:, None, :] * at(r1, c1)))
    return ((y0, y1), (x0, x1)), probs.mul_(row_in[:, :, None] & col_in[:, None, :])


def _interpolate_taps(pixels: Tensor, start: Tensor, end: Tensor, in_size: int,
                      dtype: torch.dtype) -> tuple[Tensor, ...]:
    """Bilinear taps of ``interpolate(align_corners=False)`` resizing ``in_size`` samples to the
    integer span [start, end] (end inclusive) of each detection, at image ``pixels``.

    Returns (i0, i1, w0, w1, inside), each (d, n): the two source indices, their weights, and
    whether the pixel lies in the detection's span.
    """
    out_size = (end - start + 1).clamp(min=1)[:, None]                   # (d, 1)
    local = pixels[None, :] - start[:, None]                              # (d, n)
    ratio = in_size / out_size.to(dtype)                                  # float, as PyTorch
    src = ((local.to(dtype) + 0.5) * ratio - 0.5).clamp(min=0)
    i0 = src.to(torch.int64).clamp(max=in_size - 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)
    w1 = src - i0.to(dtype)
    inside = (local >= 0) & (local <= (end - start)[:, None])          # torchvision's slice
    return i0, i1, 1 - w1, w1, inside


PASTE_MODES = {'mmdet': _paste_region, 'torchvision': _paste_region_torchvision}
