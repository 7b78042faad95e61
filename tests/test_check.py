# Copyright (c) mmconv contributors. All rights reserved.
"""`mmconv check CONFIG`: the dry run that catches a random backbone before
training (shipped config + raw file; the wrong method; MMDetection's own
selfsup config with a raw file, the silent failure it exists for)."""
import json
import os

import pytest

from mmconv.cli import main
from tests.fixtures.official_layouts import (build_moco_v2,
                                             build_swav_training, save_layout)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, 'configs', 'selfsup_pretrain',
                       'mask-rcnn_r50-mocov2-selfsup-raw-pre_fpn_1x_coco.py')
MMDET_OWN = 'mmdet::selfsup_pretrain/mask-rcnn_r50-mocov2-pre_fpn_1x_coco.py'
#: SyncBN is built fine without a process group, but keep the model light
LIGHT = ['model.backbone.norm_cfg.type=BN']


@pytest.fixture(scope='module')
def moco_file(module_tmp_path):
    return save_layout(build_moco_v2(), str(module_tmp_path / 'moco'))


def _rows(out: str):
    return {r['module']: r for r in json.loads(out)['rows']}


def test_shipped_config_with_raw_moco_loads_the_whole_backbone(
        moco_file, capsys):
    """Every backbone parameter comes from the raw MoCo v2 file: exit 0."""
    assert main(['check', SHIPPED, '--json', '--cfg-options',
                 f'model.backbone.init_cfg.checkpoint={moco_file}',
                 *LIGHT]) == 0
    rows = _rows(capsys.readouterr().out)
    assert rows['backbone']['from_ckpt'] == rows['backbone']['params'] > 0
    assert rows['backbone']['files'] == [moco_file]
    assert main(['check', SHIPPED, '--cfg-options',
                 f'model.backbone.init_cfg.checkpoint={moco_file}',
                 *LIGHT]) == 0
    assert 'Pretrained weights per module' in capsys.readouterr().out


def test_file_of_another_method_fails_naming_the_module(tmp_path, capsys):
    """A SwAV file in the MoCo config (method='moco'): exit 7, one line
    naming the backbone and the fix."""
    swav = save_layout(build_swav_training(), str(tmp_path))
    assert main(['check', SHIPPED, '--cfg-options',
                 f'model.backbone.init_cfg.checkpoint={swav}', *LIGHT]) == 7
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'backbone' in err and "'swav'" in err


def test_mmdetection_own_config_with_a_raw_file_fails(moco_file, capsys):
    """MMDetection's selfsup config loads a raw MoCo file with plain
    Pretrained: no key matches, the backbone stays random: exit 7."""
    assert main(['check', MMDET_OWN, '--cfg-options',
                 f'model.backbone.init_cfg.checkpoint={moco_file}',
                 *LIGHT]) == 7
    captured = capsys.readouterr()
    assert 'backbone (init from' in captured.err
    assert 'random initialisation' in captured.err


def test_load_from_is_applied_and_named(moco_file, tmp_path, capsys):
    """--checkpoint (as load_from) is applied after initialisation and
    becomes the source the table compares with."""
    import torch
    from mmengine.hub import get_config
    from mmengine.registry import MODELS, init_default_scope
    from mmdet.utils import register_all_modules
    register_all_modules()
    init_default_scope('mmdet')
    cfg = get_config('mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py')
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    path = tmp_path / 'epoch_12.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    assert main(['check', SHIPPED, '--json', '--checkpoint', str(path),
                 '--cfg-options',
                 f'model.backbone.init_cfg.checkpoint={moco_file}',
                 *LIGHT]) == 0
    rows = _rows(capsys.readouterr().out)
    for row in rows.values():
        assert row['from_ckpt'] == row['params'], row
        assert row['files'][0] == str(path)
