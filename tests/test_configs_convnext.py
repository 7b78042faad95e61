# Copyright (c) mmconv contributors. All rights reserved.
"""configs/convnext: every config parses and builds (a small ConvNeXt
through cfg-options) and loads its raw file; (slow) trains two iterations
with `mim train mmdet` on a tiny COCO set from the raw file, on CPU."""
import glob
import os
from typing import Dict, List

import pytest
import torch

from tests.fixtures import convnext_layouts as L
from tests.helpers.mim_train import (ROOT, assert_losses_finite,
                                     backbone_row, data_options, run_train)
from tests.test_configs import tiny_coco  # noqa: F401 (fixture)

CONVNEXT_CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', 'convnext',
                                                 '*.py')))
MMDET_BASE = 'mmdet::convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_' \
    'coco.py'


def _name(path: str) -> str:
    return os.path.basename(path)


def _layout_for(path: str) -> L.ConvNeXtLayout:
    """A raw file of the source the config names (small model)."""
    if '-fcmae-' in _name(path):
        return L.build_fcmae('released')
    return L.build_official_v1('released')


def _small(layout: L.ConvNeXtLayout) -> Dict[str, object]:
    """cfg-options that make the config's ConvNeXt the layout's size."""
    return {
        'model.backbone.arch._delete_': True,
        'model.backbone.arch.depths': list(L.DEPTHS),
        'model.backbone.arch.channels': list(L.DIMS),
        'model.neck.in_channels': list(L.DIMS),
    }


def test_names_are_new_and_say_the_source():
    import mmdet
    names = [_name(p) for p in CONVNEXT_CONFIGS]
    assert len(names) == 2 and all('-raw-pre_' in n for n in names)
    assert sum('fcmae-selfsup-raw' in n for n in names) == 1
    theirs = {os.path.basename(p) for p in glob.glob(os.path.join(
        os.path.dirname(mmdet.__file__), '.mim', 'configs', '**', '*.py'),
        recursive=True)}
    assert not set(names) & theirs


@pytest.mark.parametrize('path', CONVNEXT_CONFIGS,
                         ids=map(_name, CONVNEXT_CONFIGS))
def test_convnext_config_is_mmdets_recipe_and_loads_raw_file(path,
                                                             tmp_path):
    """A few lines over MMDetection's ConvNeXt base: the same backbone type
    and outputs, SelfSupPretrained on the raw file; built small, its init
    loads every tensor the file has, bit for bit."""
    from mmengine.config import Config
    from mmengine.hub import get_config
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(path)
    base = get_config(MMDET_BASE)
    assert cfg.custom_imports == dict(imports=['mmconv'],
                                      allow_failed_imports=False)
    backbone = cfg.model.backbone
    assert backbone.type == 'mmpretrain.ConvNeXt' == base.model.backbone.type
    for key in ('arch', 'out_indices', 'gap_before_final_norm',
                'drop_path_rate'):
        assert backbone[key] == base.model.backbone[key], key
    assert backbone.init_cfg.type == 'SelfSupPretrained'
    assert 'prefix' not in backbone.init_cfg
    assert cfg.optim_wrapper.type == base.optim_wrapper.type
    assert cfg.train_cfg.max_epochs == base.train_cfg.max_epochs
    assert dict(type='PretrainedLoadCheckHook') in cfg.custom_hooks
    fcmae = '-fcmae-' in _name(path)
    assert backbone.get('use_grn', False) == fcmae
    assert (backbone.layer_scale_init_value == 0.) == fcmae
    layout = _layout_for(path)
    src = str(tmp_path / layout.filename)
    torch.save(layout.checkpoint, src)
    options = _small(layout)
    options['model.backbone.init_cfg.checkpoint'] = src
    cfg.merge_from_dict(options)
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    model.backbone.init_weights()
    state = model.backbone.state_dict()
    for key, value in layout.expected.items():
        assert torch.equal(state[key], value), key
    with torch.no_grad():
        model.eval()
        feats = model.extract_feat(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [256] * 5


def _train_options(data: str, layout: L.ConvNeXtLayout,
                   src: str) -> List[str]:
    opts = [f'{k}={v}'.replace(' ', '') for k, v in _small(layout).items()]
    # MMDetection's RandomChoice of resize / resize-crop-resize, small
    small = '[(128,96)]'
    aug = 'train_dataloader.dataset.pipeline.3.transforms'
    opts += [f'{aug}.0.0.scales={small}', f'{aug}.1.0.scales={small}',
             f'{aug}.1.1.crop_size=(64,64)', f'{aug}.1.2.scales={small}']
    return opts + data_options(data) + [
        'optim_wrapper.type=OptimWrapper',  # AmpOptimWrapper needs a GPU
        'train_dataloader.batch_size=1', 'train_cfg.max_epochs=1',
        'train_cfg.val_begin=2', 'default_hooks.logger.interval=1',
        'default_hooks.checkpoint.interval=1', 'randomness.seed=0',
        f'model.backbone.init_cfg.checkpoint={src}',
    ]


@pytest.mark.slow
@pytest.mark.parametrize('path', CONVNEXT_CONFIGS,
                         ids=map(_name, CONVNEXT_CONFIGS))
def test_mim_train_convnext(path, tiny_coco, tmp_path):  # noqa: F811
    """`mim train mmdet CONFIG` for two iterations from the raw file: exit
    0, finite losses, checkpoint saved; at iteration 0 every backbone
    parameter but the fresh output norms is bit-identical to the file's."""
    layout = _layout_for(path)
    src = str(tmp_path / layout.filename)
    torch.save(layout.checkpoint, src)
    work = tmp_path / 'work'
    output = run_train(path, work, _train_options(tiny_coco, layout, src))
    row = backbone_row(output)
    params, from_file = int(row.group(1)), int(row.group(3))
    assert params == len(layout.expected) + len(layout.left_at_init)
    assert from_file == len(layout.expected), row.group(0)
    assert_losses_finite(work)
    saved = torch.load(str(work / 'epoch_1.pth'), map_location='cpu',
                       weights_only=False)
    backbone = {k[len('backbone.'):] for k in saved['state_dict']
                if k.startswith('backbone.')}
    assert backbone == set(layout.expected) | set(layout.left_at_init)
