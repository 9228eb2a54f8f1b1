"""mmengine checkpoints load with torch.load(weights_only=True) after rcnn_det's allow-list;
load_checkpoint_file names the file of every failure; load_state_dict_strict refuses a state
dict that does not fit the model, listing keys and shapes, and leaves the model unchanged."""
import os
import pickle
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub
from torch import nn

from conftest import REPO_ROOT
from rcnn_det.engine import (CheckpointError, CheckpointMismatchError, CheckpointRefusedError,
                             load_checkpoint_file, load_state_dict_strict,
                             register_checkpoint_safe_globals)


def test_message_hub_state_round_trips_with_weights_only(tmp_path):
    register_checkpoint_safe_globals()
    hub = MessageHub.get_instance('ckpt_test_hub')
    for i in range(5):
        hub.update_scalar('train/loss', 1.0 / (i + 1))
    hub.update_info('iter', np.int64(7))
    path = tmp_path / 'ckpt.pth'
    torch.save(dict(message_hub=hub.state_dict(), meta=dict(seed=np.int64(3), epoch=1)), path)
    loaded = torch.load(path, map_location='cpu', weights_only=True)
    buffer = loaded['message_hub']['log_scalars']['train/loss']
    assert isinstance(buffer, HistoryBuffer)
    assert buffer.mean() == pytest.approx(np.mean([1, 1 / 2, 1 / 3, 1 / 4, 1 / 5]))
    assert buffer.current() == pytest.approx(0.2)
    assert loaded['meta']['seed'] == 3


def test_other_globals_stay_refused(tmp_path):
    register_checkpoint_safe_globals()
    path = tmp_path / 'evil.pth'
    torch.save(dict(payload=pickle.loads), path)  # a function is not data
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


# ---- load_checkpoint_file: every failure names the file ----------------------------------------

def small_model(classes: int = 4) -> nn.Module:
    """Eight tensors: 'body' (a linear layer and a BatchNorm with its 3 buffers), then 'head'."""
    torch.manual_seed(classes)
    return nn.Sequential(OrderedDict(body=nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8)),
                                     head=nn.Linear(8, classes + 1)))


def save(path, obj):
    torch.save(obj, path)
    return str(path)


def test_load_checkpoint_file_reads_an_mmengine_checkpoint(tmp_path):
    hub = MessageHub.get_instance('ckpt_file_test_hub')
    hub.update_scalar('train/loss', 0.5)
    register_checkpoint_safe_globals()  # as the tools do before their runner saves
    state = small_model().state_dict()
    path = save(tmp_path / 'iter_2.pth', dict(state_dict=state, message_hub=hub.state_dict(),
                                               meta=dict(iter=np.int64(2))))
    loaded = load_checkpoint_file(path)
    assert loaded['meta']['iter'] == 2 and set(loaded['state_dict']) == set(state)
    assert isinstance(loaded['message_hub']['log_scalars']['train/loss'], HistoryBuffer)


def test_load_checkpoint_file_names_the_file_of_every_failure(tmp_path):
    with pytest.raises(FileNotFoundError, match=f'checkpoint not found: {tmp_path}/nope.pth'):
        load_checkpoint_file(tmp_path / 'nope.pth')

    good = save(tmp_path / 'good.pth', dict(state_dict=small_model().state_dict()))
    data = open(good, 'rb').read()
    half = tmp_path / 'half.pth'
    half.write_bytes(data[:len(data) // 2])  # an interrupted copy or save
    with pytest.raises(CheckpointError, match=f'cannot read checkpoint {half} '
                                              r'\(a truncated or corrupt file\?\)'):
        load_checkpoint_file(half)
    text = tmp_path / 'notes.pth'
    text.write_text('not a checkpoint at all')
    with pytest.raises(CheckpointError, match=f'cannot read checkpoint {text}'):
        load_checkpoint_file(text)

    evil = save(tmp_path / 'evil.pth', dict(state_dict={}, hook=pickle.loads))
    with pytest.raises(CheckpointRefusedError) as error:
        load_checkpoint_file(evil)
    assert str(error.value) == (
        f'refused to load checkpoint {evil}: it holds pickle.loads, which is neither a tensor '
        'nor a type allow-listed in rcnn_det/engine/checkpoint.py (unpickling it could run code)')
    assert isinstance(error.value, pickle.UnpicklingError)  # what torch.load raises for it

    tensor = save(tmp_path / 'tensor.pth', torch.zeros(3))
    with pytest.raises(CheckpointError, match=f'checkpoint {tensor} is not a checkpoint: it '
                                              'holds a Tensor, not a dict'):
        load_checkpoint_file(tensor)
    listed = save(tmp_path / 'listed.pth', dict(state_dict=[torch.zeros(3)]))
    with pytest.raises(CheckpointError, match=f'checkpoint {listed} is not a checkpoint: its '
                                              'state_dict is a list, not a dict'):
        load_checkpoint_file(listed)


# ---- load_state_dict_strict: refuses what does not fit, listing keys and shapes ---------------

def test_a_fitting_checkpoint_loads(tmp_path):
    trained = small_model().state_dict()
    for checkpoint in (dict(state_dict=trained, meta={}),                     # mmengine's layout
                       trained,                                                # a bare state dict
                       {f'module.{k}': v for k, v in trained.items()}):       # saved from DDP
        model = small_model()
        model[0][0].weight.data.zero_()
        load_state_dict_strict(model, checkpoint, 'iter_2.pth')
        assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())


def test_a_checkpoint_of_another_model_is_refused_and_the_model_unchanged():
    checkpoint = dict(state_dict=small_model(classes=80).state_dict())
    model = small_model(classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as error:
        load_state_dict_strict(model, checkpoint, 'work/iter_2.pth')
    assert str(error.value) == (
        'checkpoint work/iter_2.pth does not fit the model (Sequential); the model is unchanged:\n'
        '  2 shape mismatches (checkpoint vs model):\n'
        '    head.weight: checkpoint (81, 8) vs model (4, 8)\n'
        '    head.bias: checkpoint (81,) vs model (4,)')
    assert error.value.shape_mismatches == [('head.weight', (81, 8), (4, 8)),
                                            ('head.bias', (81,), (4,))]
    assert isinstance(error.value, CheckpointError) and isinstance(error.value, RuntimeError)
    # 'body' fitted, but nothing was copied: the model is the one we had
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_missing_and_unexpected_keys_are_listed_first_five_then_counted():
    state = small_model().state_dict()
    del state['body.1.running_var']
    state.update({f'extra.{i}': torch.zeros(1) for i in range(7)})
    with pytest.raises(CheckpointMismatchError) as error:
        load_state_dict_strict(small_model(), state, 'other.pth')
    assert str(error.value) == (
        'checkpoint other.pth does not fit the model (Sequential); the model is unchanged:\n'
        '  1 missing key (in the model, not in the checkpoint):\n'
        '    body.1.running_var\n'
        '  7 unexpected keys (in the checkpoint, not in the model):\n'
        + ''.join(f'    extra.{i}\n' for i in range(5)) +
        '    ... and 2 more')
    assert error.value.missing_keys == ['body.1.running_var']
    assert error.value.unexpected_keys == [f'extra.{i}' for i in range(7)]


class Renaming(nn.Module):
    """A module whose load hook renames an older key ('old.weight' -> 'new.weight'), as
    DeformableDETR renames mmdetection 3.x keys."""

    def __init__(self) -> None:
        super().__init__()
        self.new = nn.Linear(2, 2)
        self._register_load_state_dict_pre_hook(self._rename)

    @staticmethod
    def _rename(state_dict, prefix, *args) -> None:
        for name in ('weight', 'bias'):
            if prefix + f'old.{name}' in state_dict:
                state_dict[prefix + f'new.{name}'] = state_dict.pop(prefix + f'old.{name}')


def test_the_models_own_key_renaming_counts():
    state = {'old.weight': torch.ones(2, 2), 'old.bias': torch.ones(2)}
    model = Renaming()
    load_state_dict_strict(model, dict(state_dict=state), 'old.pth')
    assert torch.equal(model.new.weight, torch.ones(2, 2))
    with pytest.raises(CheckpointMismatchError) as e:
        load_state_dict_strict(model, {'old.weight': torch.ones(3, 2), 'old.bias': torch.ones(2)},
                               'old.pth')
    assert 'new.weight: checkpoint (3, 2) vs model (2, 2)' in str(e.value)


def test_a_value_that_cannot_be_copied_says_the_model_may_be_partly_loaded():
    state = small_model().state_dict()
    state['body.0.weight'] = torch.empty(8, 3, device='meta')  # right key and shape, no data
    with pytest.raises(CheckpointMismatchError, match=r'(?s)checkpoint meta.pth does not fit the '
                                                      r'model \(Sequential\); the model may be '
                                                      r'partly loaded: .*body\.0\.weight'):
        load_state_dict_strict(small_model(), state, 'meta.pth')


def test_importing_rcnn_det_registers_nothing():
    """The allow-list and the HistoryBuffer pickling change come from
    register_checkpoint_safe_globals() alone, not from an import."""
    code = ('import torch, rcnn_det.engine, rcnn_det.apis, rcnn_det.models\n'
            'from mmengine.logging import HistoryBuffer\n'
            'assert HistoryBuffer not in torch.serialization.get_safe_globals()\n'
            "assert HistoryBuffer.__getstate__.__module__.startswith('mmengine.')\n"
            'rcnn_det.engine.register_checkpoint_safe_globals()\n'
            'assert HistoryBuffer in torch.serialization.get_safe_globals()\n')
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
