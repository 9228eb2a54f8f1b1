"""capture_rng_state / restore_rng_state put Python's, numpy's and torch's generators back
exactly, also through torch.save + torch.load(weights_only=True); preserved_rng leaves them
untouched, even when its block raises."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from rcnn_det.engine.random_state import capture_rng_state, preserved_rng, restore_rng_state


def draws() -> tuple:
    """Values from every generator, the cached Gaussians included (Python's gauss and numpy's
    standard_normal draw pairs and keep the second one)."""
    return (random.random(), random.getrandbits(64), random.gauss(0, 1), float(np.random.rand()),
            float(np.random.standard_normal()), np.random.randint(0, 2 ** 31, 4).tolist(),
            torch.rand(3).tolist(), torch.randperm(10).tolist())


def reseed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@pytest.mark.parametrize('gauss_cached', [False, True])
def test_capture_draw_restore_draws_the_same(gauss_cached):
    """capture -> draw -> restore -> draw gives the same values from every generator."""
    reseed(3)
    draws()
    if not gauss_cached:
        np.random.standard_normal()  # uses up the Gaussian that draws() left cached
    assert np.random.get_state()[3] == int(gauss_cached)  # numpy's has_gauss
    state = capture_rng_state()
    first = draws()
    draws()
    restore_rng_state(state)
    assert draws() == first


def test_state_survives_torch_save_weights_only(tmp_path):
    """The state is made of tensors, ints, floats, strings and tuples: torch.load with
    weights_only=True reads it back without any allow-listed global, and it restores."""
    reseed(8)
    np.random.standard_normal()
    state = capture_rng_state()
    first = draws()
    path = tmp_path / 'rng.pth'
    torch.save(dict(rng=[state]), path)
    saved_globals = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()  # nothing of rcnn_det's allow-list is needed
    try:
        loaded = torch.load(path, weights_only=True)['rng'][0]
    finally:
        torch.serialization.add_safe_globals(saved_globals)
    draws()
    restore_rng_state(loaded)
    assert draws() == first


def test_restore_into_another_process_state():
    """Restoring makes the generators draw what they drew after capture, whatever they were
    seeded with in between."""
    reseed(1)
    state = capture_rng_state()
    first = draws()
    reseed(2)
    restore_rng_state(state)
    assert draws() == first


def test_preserved_rng_leaves_generators_untouched():
    """Draws inside the block do not move the generators, also when the block raises."""
    reseed(5)
    expected = draws()
    reseed(5)
    with preserved_rng():
        inside = draws()
        reseed(99)
        draws()
    assert inside == expected
    assert draws() == expected  # the block's draws did not advance anything

    reseed(5)
    with pytest.raises(ValueError, match='boom'):
        with preserved_rng():
            draws()
            raise ValueError('boom')
    assert draws() == expected
