"""CdnQueryGenerator (DINO's contrastive denoising queries) against a Python-loop reference of
mmdetection 3.x's algorithm that draws the same random tensors in the same order, plus
statistical and structural checks."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from mmengine.structures import InstanceData

from rcnn_det.models.layers import (CdnQueryGenerator, DenoisingQueries, build_dn_generator,
                                    dn_attn_mask, noisy_dn_boxes, noisy_dn_labels)
from rcnn_det.structures import DetDataSample

NUM_CLASSES, EMBED_DIMS, NUM_QUERIES = 7, 8, 5


def make_samples(counts: list[int], seed: int = 0, dtype=torch.float32) -> list[DetDataSample]:
    """One sample per count: random xyxy pixel boxes inside its own img_shape, which differs
    from the (padded) batch_input_shape so that the normalisation frame is visible."""
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for i, n in enumerate(counts):
        img_h, img_w = 40 + 7 * i, 60 - 5 * i
        xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 0.7
        wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 0.3 + 0.01
        scale = torch.tensor([img_w, img_h], dtype=torch.float64)
        boxes = torch.cat([xy * scale, (xy + wh) * scale], 1).to(dtype)
        labels = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
        sample = DetDataSample(metainfo=dict(img_shape=(img_h, img_w),
                                             batch_input_shape=(64, 64), pad_shape=(64, 64)))
        sample.gt_instances = InstanceData(bboxes=boxes, labels=labels)
        samples.append(sample)
    return samples


def generator(**kwargs) -> CdnQueryGenerator:
    kwargs.setdefault('group_cfg', dict(num_dn_queries=100))
    torch.manual_seed(1234)  # the label embedding's initial values
    return CdnQueryGenerator(NUM_CLASSES, EMBED_DIMS, NUM_QUERIES, **kwargs)


# ------------------------------------------------------------------- the brute-force reference
def reference_num_groups(counts, group_cfg) -> int:
    group_cfg = group_cfg or {}
    if group_cfg.get('dynamic', True):
        budget = group_cfg.get('num_dn_queries', 100)
        return 1 if max(counts) == 0 else max(budget // max(counts), 1)
    return max(group_cfg['num_groups'], 1)


def reference_mask_mmdet_loop(max_gt: int, groups: int, num_queries: int) -> torch.Tensor:
    """mmdetection's construction: slices, one group of rows per step."""
    num_dn = 2 * max_gt * groups
    mask = torch.zeros(num_dn + num_queries, num_dn + num_queries, dtype=torch.bool)
    mask[num_dn:, :num_dn] = True
    for g in range(groups):
        rows = slice(2 * max_gt * g, 2 * max_gt * (g + 1))
        mask[rows, 2 * max_gt * (g + 1):num_dn] = True
        mask[rows, :2 * max_gt * g] = True
    return mask


def reference_mask_cells(max_gt: int, groups: int, num_queries: int) -> torch.Tensor:
    """The rule, cell by cell: a column in the denoising part is visible only to rows of its
    own group; matching columns are visible to everyone."""
    num_dn = 2 * max_gt * groups
    total = num_dn + num_queries
    mask = torch.zeros(total, total, dtype=torch.bool)
    for row in range(total):
        for col in range(total):
            if col < num_dn:
                same_group = row < num_dn and row // (2 * max_gt) == col // (2 * max_gt)
                mask[row, col] = not same_group
    return mask


def reference(gen: CdnQueryGenerator, samples, group_cfg) -> tuple:
    """mmdetection's CdnQueryGenerator.__call__ written with loops over targets and
    coordinates; draws rand / randint exactly as mmdetection does (same calls, shapes, dtypes)."""
    counts = [len(s.gt_instances.labels) for s in samples]
    boxes, labels, owner, local = [], [], [], []
    for b, s in enumerate(samples):
        img_h, img_w = s.metainfo['img_shape'][:2]
        for k in range(counts[b]):
            x1, y1, x2, y2 = s.gt_instances.bboxes[k].tolist()
            boxes.append([x1 / img_w, y1 / img_h, x2 / img_w, y2 / img_h])
            labels.append(int(s.gt_instances.labels[k]))
            owner.append(b)
            local.append(k)
    num_targets, max_gt = len(labels), max(counts)
    groups = reference_num_groups(counts, group_cfg)
    num_noisy = 2 * groups * num_targets
    box_dtype = samples[0].gt_instances.bboxes.dtype

    noisy_labels = [labels[i % num_targets] for i in range(num_noisy)]
    if gen.label_noise_scale > 0:
        p = torch.rand_like(torch.zeros(num_noisy))
        chosen = [i for i in range(num_noisy) if p[i] < gen.label_noise_scale * 0.5]
        new = torch.randint_like(torch.tensor(chosen, dtype=torch.long), 0, gen.num_classes)
        for i, label in zip(chosen, new.tolist()):
            noisy_labels[i] = label

    expanded = torch.zeros(num_noisy, 4, dtype=box_dtype)
    if gen.box_noise_scale > 0:
        sign = torch.randint_like(expanded, low=0, high=2, dtype=torch.float32) * 2.0 - 1.0
        part = torch.rand_like(expanded)
    noisy_boxes = []
    for i in range(num_noisy):
        j, t = divmod(i, num_targets)
        box = list(boxes[t])
        if gen.box_noise_scale > 0:
            sides = [box[2] - box[0], box[3] - box[1]] * 2
            for c in range(4):
                u = (float(part[i, c]) + (1.0 if j % 2 == 1 else 0.0)) * float(sign[i, c])
                box[c] = box[c] + u * sides[c] * gen.box_noise_scale / 2
        box = [min(max(v, 0.0), 1.0) for v in box]
        cxcywh = [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0], box[3] - box[1]]
        inv = []
        for v in cxcywh:
            v = min(max(v, 0.0), 1.0)
            inv.append(math.log(max(v, 1e-3) / max(1 - v, 1e-3)))
        noisy_boxes.append(inv)

    num_dn = 2 * groups * max_gt
    weight = gen.label_embedding.weight.detach()
    label_query = torch.zeros(len(samples), num_dn, EMBED_DIMS)
    bbox_query = torch.zeros(len(samples), num_dn, 4, dtype=torch.float64)
    for i in range(num_noisy):
        j, t = divmod(i, num_targets)
        slot = j * max_gt + local[t]
        label_query[owner[t], slot] = weight[noisy_labels[i]]
        bbox_query[owner[t], slot] = torch.tensor(noisy_boxes[i], dtype=torch.float64)
    mask = reference_mask_mmdet_loop(max_gt, groups, gen.num_matching_queries)
    meta = dict(num_denoising_queries=num_dn, num_denoising_groups=groups)
    return label_query, bbox_query, mask, meta


CASES = [  # (gt counts per image, group_cfg, label noise, box noise)
    ([3, 1], dict(dynamic=True, num_groups=None, num_dn_queries=10), 0.5, 1.0),
    ([0, 2, 4], dict(dynamic=True, num_dn_queries=9), 0.5, 1.0),
    ([5, 5, 1], dict(dynamic=False, num_groups=3), 0.8, 0.4),
    ([2, 0], dict(dynamic=False, num_groups=2), 0.5, 1.0),
    ([6], dict(dynamic=True, num_dn_queries=4), 0.5, 1.0),          # budget < M: one group
    ([4, 3], None, 0.5, 1.0),                                        # mmdet's defaults
    ([3, 2], dict(dynamic=False, num_groups=2), 0.0, 0.0),           # no noise, no draws
    ([0, 0], dict(dynamic=True, num_dn_queries=10), 0.5, 1.0),       # no target in the batch
    ([0, 0], dict(dynamic=False, num_groups=4), 0.5, 1.0),
]


@pytest.mark.parametrize('counts, group_cfg, label_noise, box_noise', CASES)
def test_matches_bruteforce_reference(counts, group_cfg, label_noise, box_noise):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')              # group_cfg=None warns about the budget
        gen = generator(label_noise_scale=label_noise, box_noise_scale=box_noise,
                        group_cfg=None if group_cfg is None else dict(group_cfg))
    samples = make_samples(counts, seed=len(counts) + sum(counts))
    torch.manual_seed(7)
    out = gen(samples)
    torch.manual_seed(7)
    ref_label, ref_bbox, ref_mask, ref_meta = reference(gen, samples, group_cfg)
    assert isinstance(out, DenoisingQueries)
    dn_label_query, dn_bbox_query, attn_mask, dn_meta = out    # unpacks like mmdet's tuple
    assert dn_meta == ref_meta
    assert dn_label_query.shape == ref_label.shape
    torch.testing.assert_close(dn_label_query.detach(), ref_label, rtol=0, atol=0)
    torch.testing.assert_close(dn_bbox_query.double(), ref_bbox, rtol=1e-4, atol=1e-4)
    assert attn_mask.dtype == torch.bool and torch.equal(attn_mask, ref_mask)


@pytest.mark.parametrize('counts, group_cfg, groups, num_dn', [
    ([3, 1], dict(num_dn_queries=100), 33, 2 * 33 * 3),
    ([10, 2, 7], dict(num_dn_queries=100), 10, 200),
    ([150], dict(num_dn_queries=100), 1, 300),                       # at least one group
    ([0, 0], dict(num_dn_queries=100), 1, 0),
    ([0, 4], dict(dynamic=False, num_groups=5), 5, 40),
    ([0, 0], dict(dynamic=False, num_groups=5), 5, 0),
    ([2], dict(dynamic=False, num_groups=0), 1, 4),                  # clamped to 1, as mmdet
])
def test_group_count_and_size(counts, group_cfg, groups, num_dn):
    gen = generator(group_cfg=group_cfg)
    out = gen(make_samples(counts))
    assert gen.get_num_groups(max(counts)) == groups
    assert out.dn_meta == dict(num_denoising_queries=num_dn, num_denoising_groups=groups)
    assert out.dn_label_query.shape == (len(counts), num_dn, EMBED_DIMS)
    assert out.dn_bbox_query.shape == (len(counts), num_dn, 4)
    assert out.attn_mask.shape == (num_dn + NUM_QUERIES,) * 2


def test_no_target_in_batch_masks_nothing_among_matching_queries():
    out = generator(group_cfg=dict(num_dn_queries=100))(make_samples([0, 0, 0]))
    assert out.dn_label_query.shape == (3, 0, EMBED_DIMS)
    assert not out.attn_mask.any() and out.attn_mask.shape == (NUM_QUERIES, NUM_QUERIES)


# ------------------------------------------------------------------------------- box noise
@pytest.mark.parametrize('scale', [1.0, 0.4])
def test_box_noise_bounds_measured_on_the_unnoised_boxes(scale):
    torch.manual_seed(0)
    num_targets, groups = 400, 3
    xy = torch.rand(num_targets, 2) * 0.8
    boxes = torch.cat([xy, xy + torch.rand(num_targets, 2) * 0.2 + 0.01], 1)
    noisy = noisy_dn_boxes(boxes, groups, scale).view(groups, 2, num_targets, 4)
    assert noisy.min() >= 0 and noisy.max() <= 1
    sides = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    # displacement of each coordinate in units of scale * half the box side
    units = (noisy - boxes) / (sides * scale / 2)
    pos, neg = units[:, 0], units[:, 1]
    assert pos.abs().max() < 1
    inside = (noisy[:, 1] > 0) & (noisy[:, 1] < 1)                   # not clipped
    assert (neg.abs()[inside] >= 1 - 1e-5).all() and (neg.abs()[inside] < 2 + 1e-5).all()
    assert inside.float().mean() > 0.5
    # clipping only moves a coordinate back towards its (in-image) ground truth
    assert (neg.abs()[~inside] < 2 + 1e-5).all()
    # both signs, and the magnitudes fill their ranges
    assert (pos > 0.5).any() and (pos < -0.5).any() and (pos.abs() < 0.1).any()
    assert (neg.abs()[inside] > 1.9).any() and (neg.abs()[inside] < 1.1).any()


def test_box_noise_zero_returns_the_boxes():
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]])
    assert torch.equal(noisy_dn_boxes(boxes, 2, 0.0), boxes.repeat(4, 1))


def test_box_queries_are_the_inverse_sigmoid_of_boxes_normalised_by_img_shape():
    samples = make_samples([2, 3])
    samples[1].set_metainfo(dict(img_shape=(52, 47, 3)))           # the official (h, w, c) form
    out = generator(box_noise_scale=0.0, group_cfg=dict(dynamic=False, num_groups=2))(samples)
    for b, sample in enumerate(samples):
        img_h, img_w = sample.metainfo['img_shape'][:2]
        x1, y1, x2, y2 = (sample.gt_instances.bboxes.double()
                          / torch.tensor([img_w, img_h, img_w, img_h])).unbind(-1)
        expected = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)
        n = len(expected)
        for part in range(4):                       # pos 0, neg 0, pos 1, neg 1: the same boxes
            got = out.dn_bbox_query[b, part * 3:part * 3 + n].double().sigmoid()
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- label noise
@pytest.mark.parametrize('num_classes, scale', [(10, 0.5), (2, 0.5), (80, 1.0)])
def test_label_flip_rate_near_expected(num_classes, scale):
    torch.manual_seed(2024)
    labels = torch.randint(0, num_classes, (2500,))
    groups = 2
    noisy = noisy_dn_labels(labels, groups, num_classes, scale)
    assert noisy.shape == (2 * groups * 2500,) and noisy.dtype == labels.dtype
    assert noisy.min() >= 0 and noisy.max() < num_classes
    changed = (noisy != labels.repeat(2 * groups)).double()
    # a position is redrawn with probability scale / 2, uniformly over all classes (its own too)
    expected = scale * 0.5 * (num_classes - 1) / num_classes
    sigma = math.sqrt(expected * (1 - expected) / changed.numel())
    assert abs(changed.mean().item() - expected) < 4 * sigma
    # a redrawn label is uniform over the classes: starting from class 0 everywhere, the
    # labels that changed spread evenly over the other C - 1
    noisy = noisy_dn_labels(torch.zeros(20000, dtype=torch.long), 1, num_classes, scale)
    changed = noisy[noisy != 0]
    freq = torch.bincount(changed, minlength=num_classes)[1:].double() / len(changed)
    assert (freq - 1 / (num_classes - 1)).abs().max() < 0.02


def test_label_noise_zero_keeps_labels_and_draws_nothing():
    labels = torch.tensor([3, 1, 4])
    torch.manual_seed(5)
    state = torch.get_rng_state()
    assert torch.equal(noisy_dn_labels(labels, 3, 7, 0.0), labels.repeat(6))
    assert torch.equal(torch.get_rng_state(), state)


# -------------------------------------------------------------------------- attention mask
@pytest.mark.parametrize('max_gt, groups, num_queries', [
    (1, 1, 3), (2, 3, 4), (3, 2, 0), (4, 5, 7), (0, 1, 4), (0, 6, 2)])
def test_attention_mask_cell_by_cell(max_gt, groups, num_queries):
    mask = dn_attn_mask(max_gt, groups, num_queries, 'cpu')
    assert mask.dtype == torch.bool
    assert torch.equal(mask, reference_mask_cells(max_gt, groups, num_queries))
    assert torch.equal(mask, reference_mask_mmdet_loop(max_gt, groups, num_queries))
    num_dn = 2 * max_gt * groups
    assert mask[num_dn:, :num_dn].all() and not mask[:, num_dn:].any()


def test_attention_mask_of_mmdets_docstring_picture():
    # M = 2, G = 2, Q = 5: two 4 x 4 blocks on the diagonal, matching rows blind to both
    mask = dn_attn_mask(2, 2, 5, 'cpu').int()
    picture = """
        0 0 0 0 1 1 1 1 0 0 0 0 0
        0 0 0 0 1 1 1 1 0 0 0 0 0
        0 0 0 0 1 1 1 1 0 0 0 0 0
        0 0 0 0 1 1 1 1 0 0 0 0 0
        1 1 1 1 0 0 0 0 0 0 0 0 0
        1 1 1 1 0 0 0 0 0 0 0 0 0
        1 1 1 1 0 0 0 0 0 0 0 0 0
        1 1 1 1 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 1 1 0 0 0 0 0
        1 1 1 1 1 1 1 1 0 0 0 0 0
        1 1 1 1 1 1 1 1 0 0 0 0 0
        1 1 1 1 1 1 1 1 0 0 0 0 0
        1 1 1 1 1 1 1 1 0 0 0 0 0"""
    expected = torch.tensor([[int(v) for v in line.split()]
                             for line in picture.strip().splitlines()], dtype=torch.int32)
    assert torch.equal(mask, expected)


# ----------------------------------------------------------------------- layout and padding
def test_padding_slots_are_zero_and_targets_fill_each_part_in_order():
    counts = [1, 3, 0]
    gen = generator(group_cfg=dict(dynamic=False, num_groups=2), label_noise_scale=0.0)
    samples = make_samples(counts)
    out = gen(samples)
    max_gt = 3
    weight = gen.label_embedding.weight.detach()
    for b, n in enumerate(counts):
        labels = samples[b].gt_instances.labels
        for part in range(4):
            start = part * max_gt
            filled = slice(start, start + n)
            padded = slice(start + n, start + max_gt)
            assert torch.equal(out.dn_label_query[b, filled].detach(), weight[labels])
            assert not out.dn_label_query[b, padded].any()
            assert not out.dn_bbox_query[b, padded].any()
            assert out.dn_bbox_query[b, filled].ne(0).all()


def test_seeded_runs_repeat_and_seeds_matter():
    gen, samples = generator(), make_samples([4, 2])
    torch.manual_seed(11)
    first = gen(samples)
    torch.manual_seed(11)
    again = gen(samples)
    torch.manual_seed(12)
    other = gen(samples)
    assert torch.equal(first.dn_label_query, again.dn_label_query)
    assert torch.equal(first.dn_bbox_query, again.dn_bbox_query)
    assert not torch.equal(first.dn_bbox_query, other.dn_bbox_query)


# ------------------------------------------------------------------ dtype, device, parameters
def test_dtype_follows_the_label_embedding_as_in_mmdet():
    samples64 = make_samples([2, 1], dtype=torch.float64)
    out = generator().double()(samples64)
    assert out.dn_label_query.dtype == out.dn_bbox_query.dtype == torch.float64
    # float32 module, float64 boxes: both queries take the embedding's dtype (mmdet casts)
    out = generator()(samples64)
    assert out.dn_label_query.dtype == out.dn_bbox_query.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_outputs_follow_the_input_device():
    gen = generator().cuda()
    samples = [s.to('cuda') for s in make_samples([3, 0, 2])]
    out = gen(samples)
    for t in (out.dn_label_query, out.dn_bbox_query, out.attn_mask):
        assert t.device.type == 'cuda'
    cpu = generator()(make_samples([3, 0, 2]))
    assert out.dn_meta == cpu.dn_meta and torch.equal(out.attn_mask.cpu(), cpu.attn_mask)


def test_state_dict_keys_and_mmdet_checkpoint_load():
    gen = generator()
    state = gen.state_dict()
    assert list(state) == ['label_embedding.weight']
    assert state['label_embedding.weight'].shape == (NUM_CLASSES, EMBED_DIMS)
    mmdet_state = {'label_embedding.weight': torch.randn(NUM_CLASSES, EMBED_DIMS)}
    gen.load_state_dict(mmdet_state, strict=True)
    assert torch.equal(gen.label_embedding.weight, mmdet_state['label_embedding.weight'])


def test_gradient_reaches_the_label_embedding_only_through_real_slots():
    gen = generator(label_noise_scale=0.0, group_cfg=dict(dynamic=False, num_groups=1))
    samples = make_samples([2, 1])
    out = gen(samples)
    out.dn_label_query.sum().backward()
    used = torch.cat([s.gt_instances.labels for s in samples])
    expected = torch.bincount(used, minlength=NUM_CLASSES).float() * 2     # pos + neg
    torch.testing.assert_close(gen.label_embedding.weight.grad,
                               expected[:, None].expand(-1, EMBED_DIMS))


# --------------------------------------------------------------------- configuration checks
def test_group_cfg_validation():
    with pytest.warns(UserWarning, match='num_dn_queries'):
        assert generator(group_cfg=dict(dynamic=True)).num_dn_queries == 100
    with pytest.raises(KeyError, match="'num_groups'"):
        generator(group_cfg=dict(dynamic=False))
    with pytest.raises(TypeError, match='num_groups must be an int'):
        generator(group_cfg=dict(dynamic=False, num_groups=2.0))
    with pytest.raises(TypeError, match='num_dn_queries must be an int'):
        generator(group_cfg=dict(num_dn_queries='100'))
    with pytest.raises(KeyError, match="did you mean 'num_dn_queries'"):
        generator(group_cfg=dict(num_dn_querys=100))
    with pytest.raises(ValueError, match='box_noise_scale'):
        generator(box_noise_scale=-1.0)


def test_build_from_mmdet_3x_co_dino_cfg():
    cfg = dict(label_noise_scale=0.5, box_noise_scale=1.0,
               group_cfg=dict(dynamic=True, num_groups=None, num_dn_queries=100))
    gen = build_dn_generator(cfg, num_classes=80, embed_dims=256, num_matching_queries=900)
    assert (gen.num_classes, gen.embed_dims, gen.num_matching_queries) == (80, 256, 900)
    assert gen.dynamic_dn_groups and gen.num_dn_queries == 100
    assert gen.label_embedding.weight.shape == (80, 256)
    # a cfg that a head already filled in (mmdet's heads write into the dict) still builds
    filled = dict(cfg, num_classes=80, embed_dims=256, num_matching_queries=900)
    build_dn_generator(filled, num_classes=80, embed_dims=256, num_matching_queries=900)
    with pytest.raises(ValueError, match='num_classes=81 contradicts'):
        build_dn_generator(dict(cfg, num_classes=81), num_classes=80, embed_dims=256,
                           num_matching_queries=900)
    with pytest.raises(KeyError, match="did you mean 'box_noise_scale'"):
        build_dn_generator(dict(cfg, box_noise_scal=1.0), num_classes=80, embed_dims=256,
                           num_matching_queries=900)
    assert build_dn_generator(None, num_classes=80, embed_dims=256,
                              num_matching_queries=900) is None


@pytest.mark.parametrize('type_name', ['CdnQueryGenerator', 'DnQueryGenerator'])
def test_build_from_official_co_detr_cfg(type_name):
    cfg = dict(type=type_name, noise_scale=dict(label=0.5, box=1.0),
               group_cfg=dict(dynamic=True, num_groups=None, num_dn_queries=100))
    gen = build_dn_generator(cfg, num_classes=80, embed_dims=256, num_matching_queries=900)
    assert (gen.label_noise_scale, gen.box_noise_scale) == (0.5, 1.0)
    assert gen.dynamic_dn_groups and gen.num_dn_queries == 100
    # the official head writes num_queries / hidden_dim into the dict
    build_dn_generator(dict(cfg, num_queries=900, hidden_dim=256, num_classes=80),
                       num_classes=80, embed_dims=256, num_matching_queries=900)
    # official defaults: box noise 0.4; a group_cfg without 'dynamic' means fixed groups
    gen = build_dn_generator(dict(type=type_name, group_cfg=dict(num_groups=3)),
                             num_classes=80, embed_dims=256, num_matching_queries=900)
    assert (gen.label_noise_scale, gen.box_noise_scale) == (0.5, 0.4)
    assert not gen.dynamic_dn_groups and gen.get_num_groups(7) == 3
    with pytest.raises(ValueError, match='num_dn_queries must be an int >= 1'):
        build_dn_generator(dict(type=type_name, group_cfg=dict(dynamic=True, num_groups=None,
                                                              num_dn_queries=None)),
                           num_classes=80, embed_dims=256, num_matching_queries=900)
    with pytest.raises(ValueError, match='type must be one of'):
        build_dn_generator(dict(cfg, type='DINOQueryGenerator'), num_classes=80,
                           embed_dims=256, num_matching_queries=900)
