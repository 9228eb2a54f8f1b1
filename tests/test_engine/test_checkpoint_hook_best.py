"""CheckpointHook(save_best=...): the previous best checkpoint is deleted only after the new one
is written (mmengine deletes it first, so a kill in between left no best checkpoint)."""
from __future__ import annotations

import logging
from types import SimpleNamespace

from mmengine.fileio import LocalBackend
from mmengine.logging import MessageHub

from rcnn_det.engine.hooks.checkpoint_hook import CheckpointHook


def fake_runner(tmp_path, seen: list):
    hub = MessageHub.get_instance('test_checkpoint_hook_best')
    hub.runtime_info.clear()

    def save_checkpoint(out_dir, filename, *args, **kwargs):
        # what is on disk at the moment the new best checkpoint is written
        seen.append(sorted(p.name for p in tmp_path.iterdir()))
        (tmp_path / filename).write_bytes(b'weights')

    return SimpleNamespace(message_hub=hub, iter=0, epoch=0, save_checkpoint=save_checkpoint,
                           logger=logging.getLogger('test_checkpoint_hook_best'))


def test_the_previous_best_is_deleted_after_the_new_one_is_written(tmp_path):
    hook = CheckpointHook(interval=1, by_epoch=False, save_best='coco/bbox_mAP', rule='greater')
    backend = LocalBackend()
    hook.out_dir, hook.file_backend, hook.last_ckpt = str(tmp_path), backend, None
    seen: list = []
    runner = fake_runner(tmp_path, seen)
    for step, score in [(10, 0.2), (20, 0.1), (30, 0.5)]:
        runner.iter = step
        hook._save_best_checkpoint(runner, {'coco/bbox_mAP': score})
    # the second save happened while the first best was still on disk; 0.1 was not better
    assert seen == [[], ['best_coco_bbox_mAP_iter_10.pth']]
    assert sorted(p.name for p in tmp_path.iterdir()) == ['best_coco_bbox_mAP_iter_30.pth']
    assert runner.message_hub.get_info('best_score') == 0.5
    # the hook's backend is back (the deletions are held back only during the call), unpatched
    assert hook.file_backend is backend and 'remove' not in vars(backend)
