# Copyright (c) mmconv contributors. All rights reserved.
"""configs/swin: every config parses and builds (a small Swin through
cfg-options), its init loads the raw file, and (slow) it trains two
iterations with `mim train mmdet` on a tiny COCO set from a raw checkpoint
in the source's official layout."""
import glob
import os
import re

import pytest
import torch

from tests.fixtures import swin_layouts as L
from tests.helpers.mim_train import (ROOT, assert_losses_finite,
                                     backbone_row, data_options, run_train)
from tests.test_configs import _scale_option, tiny_coco  # noqa: F401

SWIN_CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', 'swin',
                                             '*.py')))


def _name(path: str) -> str:
    return os.path.basename(path)


def _layout_for(path: str) -> L.SwinLayout:
    """A raw checkpoint of the source the config names (small model)."""
    base = _name(path)
    if '-simmim-' in base:
        return L.build_simmim()
    if base.startswith('mask-rcnn_swinv2-'):
        return L.build_official('released', v2=True)
    return L.build_official('released')


def _small(layout: L.SwinLayout, src: str) -> dict:
    """cfg-options that make the config's Swin the layout's size."""
    widths = [L.EMBED * 2**i for i in range(4)]
    options = {'model.backbone.init_cfg.checkpoint': src,
               'model.neck.in_channels': widths,
               'model.backbone.drop_path_rate': 0.0}
    if layout.v2:
        options.update({'model.backbone.arch.embed_dims': L.EMBED,
                        'model.backbone.arch.depths': list(L.DEPTHS),
                        'model.backbone.arch.num_heads': list(L.HEADS)})
    else:
        options.update({'model.backbone.embed_dims': L.EMBED,
                        'model.backbone.depths': list(L.DEPTHS),
                        'model.backbone.num_heads': list(L.HEADS)})
    return options


def test_names_are_raw_and_unique():
    import mmdet
    names = [_name(p) for p in SWIN_CONFIGS]
    assert len(names) == 3
    assert all(n.endswith('-raw-pre_fpn_1x_coco.py') for n in names)
    theirs = {os.path.basename(p) for p in glob.glob(os.path.join(
        os.path.dirname(mmdet.__file__), '.mim', 'configs', '**', '*.py'),
        recursive=True)}
    assert not set(names) & theirs


@pytest.mark.parametrize('path', SWIN_CONFIGS, ids=map(_name, SWIN_CONFIGS))
def test_swin_config_parses_and_builds(path, tmp_path):
    """The config builds with a small Swin; its init loads the raw file
    through SelfSupPretrained (MMDetection's SwinTransformer hands it over)
    and every pre-trained tensor arrives."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(path)
    assert 'mmconv' in cfg.custom_imports['imports']
    assert cfg.custom_hooks == [dict(type='PretrainedLoadCheckHook')]
    backbone = cfg.model.backbone
    assert backbone.init_cfg.type == 'SelfSupPretrained'
    assert set(backbone.init_cfg) == {'type', 'checkpoint'}
    assert backbone.out_indices == (0, 1, 2, 3)
    layout = _layout_for(path)
    if layout.v2:
        assert backbone.type == 'mmpretrain.SwinTransformerV2'
        assert backbone.window_size == layout.window_size
    else:
        assert backbone.type == 'SwinTransformer'
        assert backbone.convert_weights is False
        assert backbone.window_size == 7  # SimMIM's window 6 is resized
    src = str(tmp_path / layout.filename)
    L.save_with_yacs(layout.checkpoint, src)
    cfg.merge_from_dict(_small(layout, src))
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    model.backbone.init_weights()
    record = model.backbone._mmconv_pretrained
    assert record['format'] == layout.name
    assert record['loaded'] == record['total']
    state = model.backbone.state_dict()
    for key, (tensor, how) in L.expected_target_tensors(layout).items():
        if key.endswith('relative_position_bias_table') and \
                state[key].shape != tensor.shape:
            assert '-simmim-' in path  # window 6 -> 7: resized
            continue
        assert torch.equal(state[key], L.with_expected_order(tensor, how)), \
            key


def _train_options(data: str, layout: L.SwinLayout, src: str,
                   path: str) -> list:
    from mmengine.config import Config
    small = _small(layout, src)
    opts = [f'{k}={v}'.replace(' ', '') for k, v in small.items()]
    return opts + data_options(data) + [
        _scale_option(Config.fromfile(path)),
        'train_dataloader.batch_size=1', 'train_cfg.max_epochs=1',
        'train_cfg.val_begin=2', 'default_hooks.logger.interval=1',
        'default_hooks.checkpoint.interval=1', 'randomness.seed=0'
    ]


@pytest.mark.slow
@pytest.mark.parametrize('path', SWIN_CONFIGS, ids=map(_name, SWIN_CONFIGS))
def test_mim_train_swin(path, tiny_coco, tmp_path):  # noqa: F811
    """`mim train mmdet CONFIG` for two iterations from the raw file: exit
    0, finite losses, checkpoint saved, every pre-trained backbone tensor
    at iteration 0 bit-identical to the converted raw file (the hook's
    table; norm0-norm2 are the never pre-trained ones)."""
    layout = _layout_for(path)
    src = str(tmp_path / layout.filename)
    L.save_with_yacs(layout.checkpoint, src)
    work = tmp_path / 'work'
    output = run_train(path, work, _train_options(tiny_coco, layout, src,
                                                  path))
    assert f'SelfSupPretrained: {src}: {layout.name} (detected' in output
    row = backbone_row(output)
    # every parameter but the fresh norm0..norm2 (weight, bias)
    assert int(row.group(3)) == int(row.group(1)) - 6, row.group(0)
    assert_losses_finite(work)
    saved = torch.load(str(work / 'epoch_1.pth'), map_location='cpu',
                       weights_only=False)
    backbone = {k[len('backbone.'):] for k in saved['state_dict']
                if k.startswith('backbone.')}
    expected = set(L.expected_target_tensors(layout))
    assert expected <= backbone
    assert {k for k in backbone - expected
            if not re.match(r'norm[0-2]\.', k)} == {
        k for k in backbone if k.endswith(('relative_position_index',
                                           'relative_coords_table'))}
