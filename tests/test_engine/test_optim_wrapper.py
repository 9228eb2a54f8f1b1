"""rcnn_det's OptimWrapper steps like mmengine's on finite losses and skips a step whose loss or
gradient norm is not finite (parameters untouched, gradients cleared, recorded in
last_step_skipped / last_grad_norm); the config route builds it; non_finite_terms names the
bad loss terms."""
from __future__ import annotations

import math

import pytest
import torch
from mmengine.optim import build_optim_wrapper
from mmengine.optim import OptimWrapper as MMEngineOptimWrapper
from mmengine.registry import DefaultScope
from torch import nn

from rcnn_det.engine import AmpOptimWrapper, OptimWrapper
from rcnn_det.engine.loops import non_finite_terms

LR = 0.1
X = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.7, -1.1]])


def make(seed: int = 0, **wrapper_kwargs) -> tuple[nn.Linear, OptimWrapper]:
    torch.manual_seed(seed)
    model = nn.Linear(3, 2)
    return model, OptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=LR),
                               **wrapper_kwargs)


def params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def grads_of(model: nn.Module, loss_fn) -> list[torch.Tensor]:
    """The gradients of ``loss_fn(model)`` on a copy of ``model`` (the reference)."""
    copy = nn.Linear(3, 2)
    copy.load_state_dict(model.state_dict())
    loss_fn(copy).backward()
    return [p.grad.clone() for p in copy.parameters()]


def grads_cleared(model: nn.Module) -> bool:
    return all(p.grad is None or not p.grad.any() for p in model.parameters())


def finite_loss(model: nn.Module) -> torch.Tensor:
    return (model(X) ** 2).sum()


def nan_loss(model: nn.Module) -> torch.Tensor:
    return finite_loss(model) * float('nan')


def inf_grad_loss(model: nn.Module) -> torch.Tensor:
    """A finite loss (0 + the finite one) whose gradient is inf: d sqrt(u)/du at u = 0."""
    zero = (model.weight - model.weight.detach()).sum()
    return finite_loss(model) + torch.sqrt(zero)


def test_finite_loss_steps():
    """Plain SGD step p - lr * g; the recorded norm is torch's total norm of the gradients."""
    model, wrapper = make()
    before, grads = params(model), grads_of(model, finite_loss)
    wrapper.update_params(finite_loss(model))
    assert wrapper.last_step_skipped is False
    for p, b, g in zip(model.parameters(), before, grads):
        torch.testing.assert_close(p.detach(), b - LR * g)
    expected_norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads))
    assert wrapper.last_grad_norm == pytest.approx(expected_norm, rel=1e-6)
    assert wrapper.last_grad_norm == pytest.approx(
        float(torch.nn.utils.get_total_norm(grads)), rel=1e-7)
    assert grads_cleared(model)


@pytest.mark.parametrize('loss_fn', [nan_loss, inf_grad_loss])
def test_non_finite_step_is_skipped(loss_fn):
    """NaN loss, or finite loss with an inf gradient: parameters unchanged, gradients cleared,
    last_step_skipped; the next finite step runs normally and clears the flag."""
    model, wrapper = make()
    before = params(model)
    loss = loss_fn(model)
    wrapper.update_params(loss)
    assert wrapper.last_step_skipped is True
    assert not math.isfinite(wrapper.last_grad_norm)
    if loss_fn is inf_grad_loss:
        assert math.isfinite(float(loss.detach())) and wrapper.last_grad_norm == math.inf
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p.detach(), b)
    assert grads_cleared(model)

    grads = grads_of(model, finite_loss)
    wrapper.update_params(finite_loss(model))
    assert wrapper.last_step_skipped is False
    for p, b, g in zip(model.parameters(), before, grads):
        torch.testing.assert_close(p.detach(), b - LR * g)


def test_mmengine_would_have_stepped_into_nan():
    """What the guard prevents: mmengine's own wrapper turns the weights into NaN."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    wrapper = MMEngineOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=LR))
    wrapper.update_params(nan_loss(model))
    assert torch.isnan(model.weight).all()


def test_with_clip_grad():
    """clip_grad still applies to finite steps (the step is the clipped gradient, of norm
    max_norm) and a NaN step is still skipped; last_grad_norm is the norm before clipping."""
    model, wrapper = make(clip_grad=dict(max_norm=1.0))
    before, grads = params(model), grads_of(model, finite_loss)
    norm = float(torch.nn.utils.get_total_norm(grads))
    assert norm > 1.0
    wrapper.update_params(finite_loss(model))
    assert not wrapper.last_step_skipped
    assert wrapper.last_grad_norm == pytest.approx(norm, rel=1e-6)
    for p, b, g in zip(model.parameters(), before, grads):
        torch.testing.assert_close(p.detach(), b - LR * g / norm, rtol=1e-5, atol=1e-6)

    before = params(model)
    wrapper.update_params(nan_loss(model))
    assert wrapper.last_step_skipped
    assert all(torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before))


def test_accumulation_checks_at_the_update_step_only():
    """accumulative_counts=2: the first call only accumulates (no check, no step, gradients
    kept); the second steps with the mean gradient, or skips when the accumulated gradient is
    not finite, even though its own loss is."""
    model, wrapper = make(accumulative_counts=2)
    before = params(model)
    g1 = grads_of(model, finite_loss)
    g2 = grads_of(model, lambda m: 3 * finite_loss(m))
    wrapper.update_params(finite_loss(model))
    assert wrapper.last_grad_norm is None and not wrapper.last_step_skipped
    assert all(torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before))
    assert all(p.grad is not None and p.grad.any() for p in model.parameters())
    wrapper.update_params(3 * finite_loss(model))
    assert wrapper.last_step_skipped is False
    for p, b, a, c in zip(model.parameters(), before, g1, g2):
        torch.testing.assert_close(p.detach(), b - LR * (a + c) / 2)

    model, wrapper = make(accumulative_counts=2)
    before = params(model)
    wrapper.update_params(nan_loss(model))  # NaN gradients, accumulated, not yet checked
    assert wrapper.last_grad_norm is None and not wrapper.last_step_skipped
    assert all(torch.isnan(p.grad).all() for p in model.parameters())
    wrapper.update_params(finite_loss(model))
    assert wrapper.last_step_skipped is True and math.isnan(wrapper.last_grad_norm)
    assert all(torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before))
    assert grads_cleared(model)


def test_built_from_config_under_rcnn_det_scope():
    """mmengine's build_optim_wrapper with the default scope 'rcnn_det' (what the Runner does
    with rcnn_det configs) gives rcnn_det's wrapper, which skips non-finite steps."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    with DefaultScope.overwrite_default_scope('rcnn_det'):
        wrapper = build_optim_wrapper(model, dict(type='OptimWrapper',
                                                  optimizer=dict(type='SGD', lr=LR)))
    assert type(wrapper) is OptimWrapper
    before = params(model)
    wrapper.update_params(nan_loss(model))
    assert wrapper.last_step_skipped
    assert all(torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before))


# ---- AmpOptimWrapper (CUDA only) -------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='AmpOptimWrapper needs CUDA')


def make_amp() -> tuple[nn.Linear, AmpOptimWrapper]:
    torch.manual_seed(0)
    model = nn.Linear(3, 2).cuda()
    return model, AmpOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=LR))


def nan_loss_cuda(model: nn.Module) -> torch.Tensor:
    return (model(X.cuda()) ** 2).sum() * float('nan')


@cuda
def test_amp_skips_a_nan_loss():
    """A NaN loss is skipped and recorded; the gradient norm is not computed (the scaler's)."""
    model, wrapper = make_amp()
    before = params(model)
    with wrapper.optim_context(model):
        loss = nan_loss_cuda(model)
    wrapper.update_params(loss)
    assert wrapper.last_step_skipped is True and wrapper.last_grad_norm is None
    assert all(torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before))
    assert grads_cleared(model)


@cuda
def test_amp_finite_loss_steps():
    """A finite loss steps (after the scaler unscales) and is not flagged."""
    model, wrapper = make_amp()
    before = params(model)
    with wrapper.optim_context(model):
        loss = (model(X.cuda()) ** 2).sum()
    wrapper.update_params(loss)
    assert wrapper.last_step_skipped is False and wrapper.last_grad_norm is None
    assert any(not torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before))


# ---- non_finite_terms ------------------------------------------------------------------------

def test_non_finite_terms():
    """The NaN/inf terms by name, in order; the total 'loss' only when it is the only one."""
    nan, inf = float('nan'), float('inf')
    assert non_finite_terms(dict(loss_cls=torch.tensor(nan), loss_bbox=torch.tensor(1.0),
                                 loss_rpn=-inf, loss=torch.tensor(nan))) == \
        ['loss_cls', 'loss_rpn']
    assert non_finite_terms(dict(loss_cls=0.5, loss_bbox=1.0, loss=inf)) == ['loss']
    assert non_finite_terms(dict(loss_cls=0.5, loss=1.5)) == []
    assert non_finite_terms(dict(loss=torch.tensor(nan))) == ['loss']
    assert non_finite_terms(dict()) == []


def test_accumulation_window_with_a_nan_micro_batch_is_skipped_once():
    """A NaN loss in an accumulation-only micro-batch skips that window's update, and the
    outcome does not linger into the next window's accumulation-only iterations."""
    model = nn.Linear(3, 2)
    wrapper = OptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                           accumulative_counts=2)
    x = torch.ones(2, 3)
    before = [p.detach().clone() for p in model.parameters()]
    wrapper.update_params(model(x).sum() * float('nan'))  # accumulate only
    wrapper.update_params(model(x).sum())                 # the update: skipped
    assert wrapper.last_step_skipped
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    wrapper.update_params(model(x).sum())                 # next window, accumulate only
    assert not wrapper.last_step_skipped and wrapper.last_grad_norm is None
    wrapper.update_params(model(x).sum())                 # its update: applied
    assert not wrapper.last_step_skipped
    assert not all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
