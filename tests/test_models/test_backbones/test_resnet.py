"""ResNet: output strides and channels, torchvision's state-dict layout, loading a torchvision
checkpoint through init_cfg, frozen stages and norm_eval. Forward passes stay on ResNet-18 or a
thin ResNet-50 (base_channels 8) at 64 x 64."""
from __future__ import annotations

import unittest.mock

import pytest
import torch
import torch.nn as nn
import torchvision
from torch.nn.modules.batchnorm import _BatchNorm

from rcnn_det.models.backbones import ResNet
from rcnn_det.models.backbones import resnet as resnet_module
from rcnn_det.models.backbones.resnet import ConvNormSequential, conv_norm
from rcnn_det.registry import MODELS


def test_resnet18_output_shapes():
    model = ResNet(depth=18).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 64, 16, 16), (1, 128, 8, 8), (1, 256, 4, 4),
                                             (1, 512, 2, 2)]
    assert model.feat_dim == 512


def test_resnet50_output_shapes_thin():
    # ResNet-50's structure (Bottleneck, 3-4-6-3) at 1/8 width: channels 32 * 2^i, strides 4..32
    model = ResNet(depth=50, base_channels=8, out_indices=(0, 1, 2, 3)).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 32, 16, 16), (1, 64, 8, 8), (1, 128, 4, 4),
                                             (1, 256, 2, 2)]
    assert [len(getattr(model, f'layer{i}')) for i in range(1, 5)] == [3, 4, 6, 3]
    # full-width ResNet-50: channels 256 * 2^i (no forward pass)
    full = ResNet(depth=50)
    assert [getattr(full, f'layer{i}')[-1].conv3.out_channels for i in range(1, 5)] == [
        256, 512, 1024, 2048]
    assert full.feat_dim == 2048


def test_out_indices_and_num_stages():
    model = ResNet(depth=18, num_stages=3, out_indices=(1, 2)).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 128, 8, 8), (1, 256, 4, 4)]
    assert not hasattr(model, 'layer4')
    with pytest.raises(ValueError, match='out_indices'):
        ResNet(depth=18, num_stages=2, out_indices=(0, 3))
    with pytest.raises(KeyError, match='depth'):
        ResNet(depth=20)


@pytest.mark.parametrize('depth, tv_builder', [(18, torchvision.models.resnet18),
                                               (50, torchvision.models.resnet50)])
def test_state_dict_keys_equal_torchvision(depth, tv_builder):
    ours = ResNet(depth=depth).state_dict()
    theirs = {k: v for k, v in tv_builder().state_dict().items() if not k.startswith('fc.')}
    assert list(ours) == list(theirs)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {
        k: tuple(v.shape) for k, v in theirs.items()}


def randomised_torchvision_resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    tv = torchvision.models.resnet18()
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):   # non-trivial running statistics too
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return tv.eval()


def test_pretrained_torchvision_checkpoint_gives_identical_outputs(tmp_path):
    tv = randomised_torchvision_resnet18()
    path = tmp_path / 'resnet18_tv.pth'
    torch.save(tv.state_dict(), path)
    model = MODELS.build(dict(type='ResNet', depth=18, frozen_stages=1, norm_eval=True,
                              init_cfg=dict(type='Pretrained', checkpoint=str(path))))
    model.init_weights()
    model.eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outs = model(x)
        y = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        expected = []
        for layer in (tv.layer1, tv.layer2, tv.layer3, tv.layer4):
            y = layer(y)
            expected.append(y)
    for o, e in zip(outs, expected):
        # equal up to float rounding: rcnn_det folds each eval-mode BN into its conv
        torch.testing.assert_close(o, e, rtol=1e-4, atol=1e-4)
    # zero_init_residual must not overwrite loaded weights
    torch.testing.assert_close(model.layer1[0].bn2.weight, tv.layer1[0].bn2.weight)


def test_default_init_zeroes_last_norm_of_each_block():
    model = ResNet(depth=18)
    model.init_weights()
    assert all((getattr(model, f'layer{i}')[j].bn2.weight == 0).all()
               for i in range(1, 5) for j in range(2))
    assert (model.bn1.weight == 1).all()
    no_zero = ResNet(depth=18, zero_init_residual=False)
    no_zero.init_weights()
    assert (no_zero.layer1[0].bn2.weight == 1).all()


def test_frozen_stages():
    model = ResNet(depth=18, frozen_stages=1, norm_eval=False)
    model.train()
    frozen = [model.conv1, model.bn1, model.layer1]
    for module in frozen:
        assert all(not p.requires_grad for p in module.parameters())
        assert all(not m.training for m in module.modules())
    for module in (model.layer2, model.layer3, model.layer4):
        assert all(p.requires_grad for p in module.parameters())
        assert all(m.training for m in module.modules())
    none_frozen = ResNet(depth=18, frozen_stages=-1)
    assert all(p.requires_grad for p in none_frozen.parameters())
    # frozen parameters really stay fixed through a backward pass
    x = torch.randn(2, 3, 32, 32)
    sum(o.sum() for o in model(x)).backward()
    assert model.conv1.weight.grad is None and model.layer1[0].conv1.weight.grad is None
    assert model.layer2[0].conv1.weight.grad is not None


def test_norm_eval_keeps_batchnorm_in_eval_mode():
    model = ResNet(depth=18, norm_eval=True).train()
    assert model.training
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert bns and all(not m.training for m in bns)
    assert model.layer2[0].conv1.training   # the rest trains
    # running statistics do not move in a training-mode forward
    before = model.layer2[0].bn1.running_mean.clone()
    model(torch.randn(1, 3, 32, 32) * 5 + 3)
    torch.testing.assert_close(model.layer2[0].bn1.running_mean, before)
    trainable = ResNet(depth=18, norm_eval=False).train()
    assert all(m.training for m in trainable.modules() if isinstance(m, _BatchNorm))


def test_caffe_style_strides_in_first_conv():
    model = ResNet(depth=50, base_channels=8, style='caffe')
    block = model.layer2[0]
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)
    pytorch = ResNet(depth=50, base_channels=8, style='pytorch').layer2[0]
    assert pytorch.conv1.stride == (1, 1) and pytorch.conv2.stride == (2, 2)


def random_bn(channels: int) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(channels)
    with torch.no_grad():
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.5, 2)
        norm.weight.normal_()
        norm.bias.normal_()
    return norm


@pytest.mark.parametrize('stride,padding,dilation', [(1, 0, 1), (2, 1, 1), (1, 2, 2)])
def test_conv_norm_folds_eval_batch_norm(stride, padding, dilation):
    """An eval-mode BN is folded into its conv: values and gradients (input, conv weight, BN
    weight and bias) equal norm(conv(x)); the running statistics stay untouched."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride, padding, dilation, bias=False)
    norm = random_bn(6).eval()
    stats = norm.running_mean.clone(), norm.running_var.clone()
    x = torch.randn(2, 4, 9, 11, requires_grad=True)
    out = conv_norm(conv, norm, x)
    grads = torch.autograd.grad(out.square().sum(), [x, conv.weight, norm.weight, norm.bias])
    out_ref = norm(conv(x))
    refs = torch.autograd.grad(out_ref.square().sum(), [x, conv.weight, norm.weight, norm.bias])
    torch.testing.assert_close(out, out_ref)
    for grad, ref in zip(grads, refs):
        torch.testing.assert_close(grad, ref)
    assert torch.equal(norm.running_mean, stats[0]) and torch.equal(norm.running_var, stats[1])


def test_conv_norm_leaves_training_batch_norm_and_other_norms_alone():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 1, bias=False)
    x = torch.randn(2, 3, 5, 5)
    norm = random_bn(4).train()
    out = conv_norm(conv, norm, x)   # batch statistics, running statistics updated
    torch.testing.assert_close(out.mean((0, 2, 3)), norm.bias.detach(), atol=1e-5, rtol=0)
    assert norm.num_batches_tracked.item() == 1
    group_norm = nn.GroupNorm(2, 4)
    torch.testing.assert_close(conv_norm(conv, group_norm, x), group_norm(conv(x)))


@pytest.mark.parametrize('depth,avg_down', [(18, False), (50, False), (50, True)])
def test_folded_resnet_equals_unfolded(depth, avg_down):
    """The whole backbone with folded BNs (eval, and norm_eval training) against the same
    weights run as separate modules (every conv_norm replaced by norm(conv(x)))."""
    torch.manual_seed(0)
    model = ResNet(depth=depth, base_channels=8, avg_down=avg_down, frozen_stages=1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.load_state_dict(random_bn(module.num_features).state_dict())
    x = torch.randn(1, 3, 64, 96)
    model.train()   # norm_eval: BN in eval mode
    outs = model(x)
    loss = sum(o.square().mean() for o in outs)
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
    with unittest.mock.patch.object(resnet_module, 'conv_norm', lambda c, n, t: n(c(t))):
        outs_ref = model(x)
        loss_ref = sum(o.square().mean() for o in outs_ref)
        refs = torch.autograd.grad(loss_ref, [p for p in model.parameters() if p.requires_grad])
    for out, ref in zip(outs, outs_ref):
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    for grad, ref in zip(grads, refs):
        torch.testing.assert_close(grad, ref, rtol=1e-3, atol=1e-5)
    assert isinstance(model.layer2[0].downsample, ConvNormSequential)


@pytest.mark.parametrize('depth', [18, 50])
def test_with_cp_gives_identical_outputs_and_gradients(depth):
    """with_cp (mmdetection's option): every residual block runs under torch.utils.checkpoint
    while training, so it runs again during backward; values and gradients do not change."""
    torch.manual_seed(0)
    plain = ResNet(depth=depth, base_channels=8, frozen_stages=1).train()
    checkpointed = ResNet(depth=depth, base_channels=8, frozen_stages=1, with_cp=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 48)
    results = []
    for model in (plain, checkpointed):
        calls = {'layer1': 0, 'layer3': 0}
        for name in calls:   # each block calls its ReLU module 2 (BasicBlock) or 3 times
            getattr(model, name)[0].relu.register_forward_hook(
                lambda *a, name=name: calls.__setitem__(name, calls[name] + 1))
        x_in = x.clone().requires_grad_()
        outs = model(x_in)
        after_forward = dict(calls)
        sum(o.square().mean() for o in outs).backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        results.append((outs, grads, x_in.grad, after_forward, calls))
    (outs, grads, x_grad, fwd, total), (outs_cp, grads_cp, x_grad_cp, fwd_cp, total_cp) = results
    for out, out_cp in zip(outs, outs_cp):
        torch.testing.assert_close(out_cp, out, rtol=0, atol=0)
    for grad, grad_cp in zip(grads + [x_grad], grads_cp + [x_grad_cp]):
        torch.testing.assert_close(grad_cp, grad, rtol=1e-5, atol=1e-7)
    relu_calls = 2 if depth == 18 else 3
    assert fwd == total == fwd_cp == {'layer1': relu_calls, 'layer3': relu_calls}
    # layer3's block ran again in backward (torch stops the recomputation once it has every
    # saved tensor back: at least its first ReLU); layer1 is frozen (eval mode): not checkpointed
    assert total_cp['layer1'] == relu_calls and total_cp['layer3'] > relu_calls


def test_with_cp_is_off_in_eval_and_without_grad():
    model = ResNet(depth=18, with_cp=True).eval()
    calls = []
    model.layer2[0].relu.register_forward_hook(lambda *a: calls.append(1))
    sum(o.sum() for o in model(torch.randn(1, 3, 32, 32))).backward()
    assert len(calls) == 2
    model.train()
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert len(calls) == 4
    assert all(block.with_cp for layer in (model.layer1, model.layer4) for block in layer)
