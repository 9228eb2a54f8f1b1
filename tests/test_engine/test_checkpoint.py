"""mmengine checkpoints load with torch.load(weights_only=True) after rcnn_det's allow-list."""
import pickle

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub

from rcnn_det.engine import register_checkpoint_safe_globals


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
