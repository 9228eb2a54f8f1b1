"""crop_and_resize_masks and paste_masks against brute-force per-pixel loops.

crop: RoIAlign (spatial_scale 1, adaptive sampling ratio) of each RoI's own gt mask, written
out bin by bin and sample by sample with RoIAlign's border rules (no torchvision in the
reference). paste: bilinear interpolation of the S x S map at every pixel centre of the image
(zero padding, align_corners=False), restricted to the chunk's padded box union.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rcnn_det.structures import crop_and_resize_masks, paste_masks

MASK_HW = (20, 24)
CROP_S = 7
IMG_HW = (24, 32)
PASTE_S = 6


# ---- references ---------------------------------------------------------------------------

def roi_align_bilinear(img: np.ndarray, y: float, x: float) -> float:
    """RoIAlign's bilinear read: 0 beyond one pixel outside, clamp below 0, last row/col."""
    height, width = img.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (hy * hx * img[y_low, x_low] + hy * lx * img[y_low, x_high]
            + ly * hx * img[y_high, x_low] + ly * lx * img[y_high, x_high])


def roi_align_reference(mask: np.ndarray, box, size: int, aligned: bool) -> np.ndarray:
    """One RoI of one single-channel map; geometry in float32 like the kernel."""
    f32 = np.float32
    offset = f32(0.5) if aligned else f32(0)
    x1, y1, x2, y2 = (f32(c) - offset for c in box)
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = max(roi_w, f32(1)), max(roi_h, f32(1))
    bin_w, bin_h = roi_w / f32(size), roi_h / f32(size)
    grid_w, grid_h = math.ceil(roi_w / f32(size)), math.ceil(roi_h / f32(size))
    count = max(grid_w * grid_h, 1)
    out = np.zeros((size, size))
    for ph in range(size):
        for pw in range(size):
            total = 0.0
            for iy in range(grid_h):
                y = float(y1) + ph * float(bin_h) + (iy + 0.5) * float(bin_h) / grid_h
                for ix in range(grid_w):
                    x = float(x1) + pw * float(bin_w) + (ix + 0.5) * float(bin_w) / grid_w
                    total += roi_align_bilinear(mask, y, x)
            out[ph, pw] = total / count
    return out


def crop_reference(masks: torch.Tensor, boxes: torch.Tensor, gt_inds: torch.Tensor, size: int,
                   aligned: bool) -> torch.Tensor:
    masks_np = masks.numpy().astype(np.float64)
    out = [roi_align_reference(masks_np[k], box, size, aligned)
           for box, k in zip(boxes.tolist(), gt_inds.tolist())]
    return torch.tensor(np.array(out).reshape(-1, size, size), dtype=torch.float32)


def zero_pad_bilinear(prob: np.ndarray, v: float, u: float) -> float:
    """grid_sample(bilinear, zeros, align_corners=False) at map coordinates (v, u)."""
    size_h, size_w = prob.shape
    v0, u0 = math.floor(v), math.floor(u)
    total = 0.0
    for vi, wv in ((v0, 1 - (v - v0)), (v0 + 1, v - v0)):
        for ui, wu in ((u0, 1 - (u - u0)), (u0 + 1, u - u0)):
            if 0 <= vi < size_h and 0 <= ui < size_w:
                total += wv * wu * prob[vi, ui]
    return total


def paste_reference(mask_probs: torch.Tensor, boxes: torch.Tensor, img_hw,
                    region_boxes: torch.Tensor | None = None) -> np.ndarray:
    """(D, H, W) float64 probabilities at every pixel; with ``region_boxes`` (D, 4), zero outside
    [floor(x1) - 1, ceil(x2) + 1) x [floor(y1) - 1, ceil(y2) + 1) of each row's region box."""
    height, width = img_hw
    probs = mask_probs.double().numpy()
    size = probs.shape[-1]
    out = np.zeros((len(probs), height, width))
    for d, (x1, y1, x2, y2) in enumerate(boxes.double().tolist()):
        rows, cols = range(height), range(width)
        if region_boxes is not None:
            rx1, ry1, rx2, ry2 = region_boxes[d].tolist()
            rows = range(max(math.floor(ry1) - 1, 0), min(math.ceil(ry2) + 1, height))
            cols = range(max(math.floor(rx1) - 1, 0), min(math.ceil(rx2) + 1, width))
        for i in rows:
            v = (i + 0.5 - y1) / (y2 - y1) * size - 0.5
            for j in cols:
                u = (j + 0.5 - x1) / (x2 - x1) * size - 0.5
                out[d, i, j] = zero_pad_bilinear(probs[d], v, u)
    return out


# ---- inputs -------------------------------------------------------------------------------

def random_masks(num: int, hw=MASK_HW, seed: int = 0) -> torch.Tensor:
    """(num, H, W) uint8: a random rectangle plus a random ellipse per mask."""
    g = torch.Generator().manual_seed(seed)
    height, width = hw
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing='ij')
    masks = torch.zeros(num, height, width, dtype=torch.uint8)
    for k in range(num):
        x0, y0 = (torch.rand(2, generator=g) * torch.tensor([width, height])).tolist()
        rw, rh = (2 + torch.rand(2, generator=g) * torch.tensor([width, height]) / 2).tolist()
        masks[k] |= ((xs >= x0) & (xs < x0 + rw) & (ys >= y0) & (ys < y0 + rh)).to(torch.uint8)
        cx, cy = (torch.rand(2, generator=g) * torch.tensor([width, height])).tolist()
        ax, ay = (2 + torch.rand(2, generator=g) * 6).tolist()
        masks[k] |= (((xs - cx) / ax) ** 2 + ((ys - cy) / ay) ** 2 <= 1).to(torch.uint8)
    return masks


def random_boxes(num: int, hw, seed: int = 0, max_side: float | None = None) -> torch.Tensor:
    """(num, 4) float32 boxes: some inside, some partly outside, some tiny (< 1 px)."""
    g = torch.Generator().manual_seed(seed)
    height, width = hw
    max_side = max_side or max(hw)
    x1 = torch.rand(num, generator=g) * (width + 10) - 6
    y1 = torch.rand(num, generator=g) * (height + 10) - 6
    w = 0.5 + torch.rand(num, generator=g) * max_side
    h = 0.5 + torch.rand(num, generator=g) * max_side
    tiny = torch.arange(num) % 5 == 4
    w = torch.where(tiny, torch.rand(num, generator=g) * 0.9 + 0.05, w)
    h = torch.where(tiny, torch.rand(num, generator=g) * 0.9 + 0.05, h)
    return torch.stack([x1, y1, x1 + w, y1 + h], 1)


# ---- crop_and_resize_masks ----------------------------------------------------------------

@pytest.mark.parametrize('aligned', [True, False])
def test_crop_matches_roi_align_reference_on_random_masks(aligned):
    masks = random_masks(4)
    boxes = random_boxes(25, MASK_HW, seed=1)
    gt_inds = torch.randint(0, 4, (25,), generator=torch.Generator().manual_seed(2))
    out = crop_and_resize_masks(masks, boxes, gt_inds, CROP_S, aligned=aligned)
    assert out.shape == (25, CROP_S, CROP_S) and out.dtype == torch.float32
    expected = crop_reference(masks, boxes, gt_inds, CROP_S, aligned)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    assert 0.1 < (expected > 0).float().mean() < 0.9     # the inputs are not trivially empty


def test_crop_boxes_partly_outside_and_tiny():
    masks = torch.ones(1, *MASK_HW, dtype=torch.uint8)
    boxes = torch.tensor([[-8.3, -5.1, 10.2, 9.7],        # over the top-left corner
                          [15.4, 12.2, 30.6, 27.9],       # over the bottom-right corner
                          [-20., 2., -12., 8.],           # entirely left of the image
                          [5.2, 5.3, 5.4, 5.45],          # tiny
                          [23.6, 3., 23.9, 4.]])          # thin, on the last column
    gt_inds = torch.zeros(5, dtype=torch.long)
    for aligned in (True, False):
        out = crop_and_resize_masks(masks, boxes, gt_inds, CROP_S, aligned=aligned)
        expected = crop_reference(masks, boxes, gt_inds, CROP_S, aligned)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    # samples more than 1 px outside read 0: the partly-outside crops are not all ones
    assert out[0].min() == 0 and out[0].max() == 1 and out[2].abs().sum() == 0


def test_crop_hand_computed_half_mask():
    """A mask whose columns 0..11 are set, cropped by the box [4, 4, 20, 12] into 2 x 2 bins."""
    mask = torch.zeros(1, *MASK_HW, dtype=torch.uint8)
    mask[0, :, :12] = 1
    box, ind = torch.tensor([[4., 4., 20., 12.]]), torch.zeros(1, dtype=torch.long)
    # aligned: the box spans pixel centres 4..19; bin 0 samples x = 4..11 (all set), bin 1 12..19
    out = crop_and_resize_masks(mask, box, ind, 2, aligned=True)
    assert out[0].tolist() == [[1., 0.], [1., 0.]]
    # not aligned: samples at x = 4.5..11.5; the last one reads half of column 11 -> 7.5 / 8
    out = crop_and_resize_masks(mask, box, ind, 2, aligned=False)
    torch.testing.assert_close(out[0], torch.tensor([[0.9375, 0.], [0.9375, 0.]]))


def test_crop_does_not_depend_on_max_bytes_or_gt_order():
    masks = random_masks(5, seed=3)
    boxes = random_boxes(30, MASK_HW, seed=4)
    gt_inds = torch.tensor([4, 0, 0, 2, 4, 4, 1, 3, 2, 0] * 3)          # unordered, duplicated
    default = crop_and_resize_masks(masks, boxes, gt_inds, CROP_S)
    one_per_chunk = crop_and_resize_masks(masks, boxes, gt_inds, CROP_S, max_bytes=1)
    two_per_chunk = crop_and_resize_masks(masks, boxes, gt_inds, CROP_S,
                                          max_bytes=2 * MASK_HW[0] * MASK_HW[1] * 4)
    assert torch.equal(default, one_per_chunk) and torch.equal(default, two_per_chunk)
    # each RoI reads its own mask: RoI-by-RoI calls give the same rows
    for p in (0, 3, 6, 7):
        alone = crop_and_resize_masks(masks[gt_inds[p:p + 1]], boxes[p:p + 1],
                                      torch.zeros(1, dtype=torch.long), CROP_S)
        assert torch.equal(alone[0], default[p])
    torch.testing.assert_close(default, crop_reference(masks, boxes, gt_inds, CROP_S, True),
                               rtol=0, atol=1e-5)
    # permuting the masks and remapping gt_inds changes nothing
    perm = torch.tensor([3, 1, 4, 0, 2])
    inv = torch.argsort(perm)
    assert torch.equal(crop_and_resize_masks(masks[perm], boxes, inv[gt_inds], CROP_S), default)


def test_crop_bool_masks_and_no_rois():
    masks = random_masks(2, seed=5)
    boxes = random_boxes(6, MASK_HW, seed=6)
    gt_inds = torch.tensor([0, 1, 1, 0, 1, 0])
    assert torch.equal(crop_and_resize_masks(masks.bool(), boxes, gt_inds, CROP_S),
                       crop_and_resize_masks(masks, boxes, gt_inds, CROP_S))
    empty = crop_and_resize_masks(masks, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long),
                                  CROP_S)
    assert empty.shape == (0, CROP_S, CROP_S)
    no_gts = crop_and_resize_masks(torch.zeros(0, *MASK_HW, dtype=torch.uint8), torch.zeros(0, 4),
                                   torch.zeros(0, dtype=torch.long), CROP_S)
    assert no_gts.shape == (0, CROP_S, CROP_S)


# ---- paste_masks --------------------------------------------------------------------------

def assert_binary_matches(out: torch.Tensor, ref: np.ndarray, threshold: float):
    """Equal to ``ref >= threshold`` except where ref is within 1e-4 of the threshold."""
    assert out.dtype == torch.bool and out.shape == ref.shape
    expected = ref >= threshold
    differ = out.numpy() != expected
    assert not (differ & (np.abs(ref - threshold) > 1e-4)).any(), np.argwhere(differ)[:5]


def paste_inputs(num: int, seed: int, max_side: float = 20):
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(num, PASTE_S, PASTE_S, generator=g)
    boxes = random_boxes(num, IMG_HW, seed=seed + 1, max_side=max_side)
    return probs, boxes


@pytest.mark.parametrize('seed', [0, 1])
def test_paste_matches_every_pixel_reference(seed):
    probs, boxes = paste_inputs(12, seed)
    ref = paste_reference(probs, boxes, IMG_HW)
    for threshold in (0.5, 0.3, 0.8):
        out = paste_masks(probs, boxes, IMG_HW, threshold)
        assert out.shape == (12,) + IMG_HW
        if threshold >= 0.5:     # outside a box the value stays < 0.5: the region is irrelevant
            assert_binary_matches(out, ref, threshold)
        # each mask over its own box +- 1 px, whether it shares a chunk (default max_bytes)
        # or has one of its own
        own_region = paste_reference(probs, boxes, IMG_HW, boxes)
        assert_binary_matches(out, own_region, threshold)
        single = paste_masks(probs, boxes, IMG_HW, threshold, max_bytes=1)
        assert torch.equal(single, out)
    assert paste_masks(probs, boxes, IMG_HW).any()        # not trivially empty


def test_paste_large_boxes_and_boxes_outside_the_image():
    probs, _ = paste_inputs(4, 7)
    boxes = torch.tensor([[-10.3, -6.2, 40.7, 30.1],      # bigger than the image
                          [20.2, 15.6, 50.9, 60.3],       # over the bottom-right corner
                          [3.3, -30., 9.9, -25.],         # entirely above the image
                          [0., 0., 32., 24.]])            # exactly the image
    out = paste_masks(probs, boxes, IMG_HW)
    assert_binary_matches(out, paste_reference(probs, boxes, IMG_HW), 0.5)
    assert not out[2].any()
    assert torch.equal(out, paste_masks(probs, boxes, IMG_HW, max_bytes=1))


def test_paste_hand_computed_constant_map():
    """A constant map pasted into an integer box with 2 px bins: zero padding halves the map
    at its border, so the weights along each axis are 1/4, 3/4, 1, ..., 1, 3/4, 1/4."""
    box = torch.tensor([[6., 4., 18., 16.]])
    wx, wy = torch.zeros(IMG_HW[1]), torch.zeros(IMG_HW[0])
    wx[5:19] = torch.tensor([.25, .75] + [1.] * 10 + [.75, .25])     # pixel 5: u = -0.75
    wy[3:17] = torch.tensor([.25, .75] + [1.] * 10 + [.75, .25])
    weight = wy[:, None] * wx[None, :]
    out = paste_masks(torch.full((1, PASTE_S, PASTE_S), 0.5), box, IMG_HW, -1)
    assert out.dtype == torch.uint8
    assert torch.equal(out[0], (0.5 * weight * 255).floor().to(torch.uint8))   # 127, 95, 31...
    out = paste_masks(torch.full((1, PASTE_S, PASTE_S), 0.8), box, IMG_HW)
    assert torch.equal(out[0], 0.8 * weight >= 0.5)       # the box less its 4 corner pixels
    assert out[0].sum() == 12 * 12 - 4 and not out[0, 4, 6] and out[0, 4, 7]


@pytest.mark.parametrize('threshold', [0.5, 0.1, -1])
def test_paste_does_not_depend_on_chunk_size(threshold):
    probs, boxes = paste_inputs(20, 3, max_side=28)
    default = paste_masks(probs, boxes, IMG_HW, threshold)
    for max_bytes in (1, IMG_HW[0] * IMG_HW[1] * 4 * 4 * 3):   # 1 and 3 masks per chunk
        assert torch.equal(paste_masks(probs, boxes, IMG_HW, threshold, max_bytes=max_bytes),
                           default)


@pytest.mark.parametrize('max_bytes', [1, None])
def test_paste_uint8_probabilities(max_bytes):
    """threshold < 0: floor(prob * 255) over each mask's own box +- 1 px."""
    probs, boxes = paste_inputs(6, 11)
    kwargs = {} if max_bytes is None else dict(max_bytes=max_bytes)
    out = paste_masks(probs, boxes, IMG_HW, -1, **kwargs)
    assert out.dtype == torch.uint8 and out.shape == (6,) + IMG_HW
    ref = paste_reference(probs, boxes, IMG_HW, boxes) * 255
    diff = (out.double() - torch.from_numpy(np.floor(ref))).abs()
    # floor() may land one step apart where prob * 255 is within float error of an integer
    assert diff.max() <= 1
    assert (diff > 0).sum() <= (np.abs(ref - np.round(ref)) < 1e-3).sum()


def test_paste_no_detections_and_box_dtype():
    out = paste_masks(torch.zeros(0, PASTE_S, PASTE_S), torch.zeros(0, 4), IMG_HW)
    assert out.shape == (0,) + IMG_HW and out.dtype == torch.bool
    out = paste_masks(torch.zeros(0, PASTE_S, PASTE_S), torch.zeros(0, 4), IMG_HW, -1)
    assert out.shape == (0,) + IMG_HW and out.dtype == torch.uint8
    probs, boxes = paste_inputs(3, 5)
    assert torch.equal(paste_masks(probs, boxes.double(), IMG_HW),
                       paste_masks(probs, boxes, IMG_HW))


@pytest.mark.parametrize('seed', [0, 1])
def test_torchvision_paste_matches_torchvision(seed):
    """mode='torchvision' equals torchvision's own per-mask loop (paste_masks_in_image), in one
    chunk or many; boxes clipped to the image as detections are."""
    from torchvision.models.detection.roi_heads import paste_masks_in_image
    probs, boxes = paste_inputs(40, seed, max_side=30)
    height, width = IMG_HW
    boxes = torch.minimum(boxes.clamp(min=0), torch.tensor([width, height, width, height]))
    ref = paste_masks_in_image(probs[:, None], boxes, IMG_HW, padding=1)[:, 0].numpy()
    for threshold in (0.5, 0.3):
        out = paste_masks(probs, boxes, IMG_HW, threshold, mode='torchvision')
        assert_binary_matches(out, ref, threshold)
        assert torch.equal(out, paste_masks(probs, boxes, IMG_HW, threshold, max_bytes=1,
                                            mode='torchvision'))
    # differs from mmdet's rule (the box grows by a pixel's worth of padding)
    assert not torch.equal(paste_masks(probs, boxes, IMG_HW, 0.3, mode='torchvision'),
                           paste_masks(probs, boxes, IMG_HW, 0.3))
    with pytest.raises(ValueError, match="mode must be one of"):
        paste_masks(probs, boxes, IMG_HW, mode='detectron2')
