# Copyright (c) mmconv contributors. All rights reserved.
"""configs/dinov3: every config parses and builds (a small backbone of the
real structure through cfg-options) and loads the raw official file with
SelfSupPretrained and no other option; (slow) trains two iterations with
`mim train mmdet` on a tiny COCO set from the raw file, on CPU."""
import glob
import os
from typing import Dict, List

import pytest
import torch

from mmconv import convert_checkpoint
from tests.helpers.mim_train import (ROOT, assert_losses_finite,
                                     backbone_row, data_options, run_train)
from tests.test_configs import tiny_coco  # noqa: F401 (fixture)
from tests.test_dcp import DEPTHS, DIMS, official, official_vit
from tests.helpers.tiers import sweep

CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', 'dinov3', '*.py')))
VIT_DEPTH = 2  # real ViT-S widths (384, 6 heads), two blocks


def _name(path: str) -> str:
    return os.path.basename(path)


def _is_vit(path: str) -> bool:
    return '_vit-' in _name(path)


def _raw(path: str) -> Dict[str, torch.Tensor]:
    """A raw official DINOv3 file of the config's backbone family."""
    return official_vit(7, VIT_DEPTH) if _is_vit(path) else official(7)


def _small(path: str) -> Dict[str, object]:
    """cfg-options that make the config's backbone the raw file's size."""
    if _is_vit(path):
        opts = {
            'model.backbone.embed_dim': 384,
            'model.backbone.num_heads': 6,
            'model.backbone.depth': VIT_DEPTH,
            'model.neck.backbone_channel': 384,
        }
        if 'frozen' in _name(path):
            opts['model.backbone.out_indices'] = [VIT_DEPTH - 1]
        else:
            opts.update({'model.backbone.window_size': 4,
                         'model.backbone.global_attn_indexes':
                         [VIT_DEPTH - 1],
                         'model.backbone.rel_pos_img_size': 128})
        return opts
    return {
        'model.backbone.arch.depths': list(DEPTHS),
        'model.backbone.arch.channels': list(DIMS),
        'model.neck.in_channels': list(DIMS),
    }


def _fresh(path: str, state: Dict[str, torch.Tensor]) -> List[str]:
    """Backbone tensors no DINOv3 file has (they keep their init)."""
    if _is_vit(path):
        return [k for k in state if '.rel_pos_' in k]
    return [k for k in state if k.split('.')[0] in ('norm0', 'norm1',
                                                    'norm2')]


def test_names_say_dinov3_and_the_size():
    import mmdet
    names = [_name(p) for p in CONFIGS]
    assert len(names) == 5 and all('dinov3' in n for n in names)
    for size in ('vit-s', 'vit-b', 'vit-l', 'convnext-t'):
        assert any(f'_{size}-dinov3' in n for n in names), size
    assert sum('-frozen-' in n for n in names) == 1
    theirs = {os.path.basename(p) for p in glob.glob(os.path.join(
        os.path.dirname(mmdet.__file__), '.mim', 'configs', '**', '*.py'),
        recursive=True)}
    assert not set(names) & theirs


def _load(path: str):
    from mmengine.config import Config
    return Config.fromfile(path)


def test_architectures_are_the_released_ones():
    """Widths, depths, heads of the released files; ViT-L's global blocks
    are the official detector's layers (m * 24 // 4 - 1)."""
    by_name = {_name(p): _load(p).model.backbone for p in CONFIGS}
    vit = {n.split('_')[1].split('-dinov3')[0]: b
           for n, b in by_name.items() if '_vit-' in n and 'frozen' not in n}
    dims = {k: (b.embed_dim, b.depth, b.num_heads) for k, b in vit.items()}
    assert dims == {'vit-s': (384, 12, 6), 'vit-b': (768, 12, 12),
                    'vit-l': (1024, 24, 16)}
    for size, b in vit.items():
        n = b.depth
        assert tuple(b.global_attn_indexes) == tuple(
            m * n // 4 - 1 for m in range(1, 5)), size
        assert (b.use_rope, b.use_abs_pos, b.with_cls_token,
                b.num_reg_tokens, b.final_norm) == (True, False, True, 4,
                                                    True)
        assert b.norm_cfg == dict(type='LN', eps=1e-5)
        assert b.init_cfg == dict(
            type='SelfSupPretrained', method='auto',
            checkpoint=b.init_cfg.checkpoint)
        assert f'dinov3_vit{size[-1]}16_pretrain_lvd1689m' in \
            b.init_cfg.checkpoint
    frozen = next(b for n, b in by_name.items() if 'frozen' in n)
    assert frozen.frozen and frozen.window_size == 0
    assert not frozen.use_rel_pos and tuple(frozen.out_indices) == (23, )
    convnext = next(b for n, b in by_name.items() if 'convnext-t' in n)
    assert convnext.type == 'mmpretrain.ConvNeXt'
    assert dict(convnext.arch) == dict(depths=[3, 3, 9, 3],
                                       channels=[96, 192, 384, 768])
    assert 'dinov3_convnext_tiny_pretrain' in convnext.init_cfg.checkpoint


@pytest.mark.parametrize('path', sweep(CONFIGS, (
    'mask-rcnn_convnext-t-dinov3-selfsup-raw-pre_fpn_amp-ms-crop-3x_coco.py',
    'mask-rcnn_vit-l-dinov3-frozen-selfsup-raw-pre_'
    'simple-fpn_lsj-100e_coco.py'),
    map(_name, CONFIGS)))
def test_config_builds_and_loads_the_raw_file(path, tmp_path):
    """Built small, the backbone's SelfSupPretrained init loads every
    tensor of the raw official file, as its conversion gives it; only the
    tensors no DINOv3 file has keep their initialisation."""
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = _load(path)
    assert cfg.custom_imports == dict(imports=['mmconv'],
                                      allow_failed_imports=False)
    assert dict(type='PretrainedLoadCheckHook') in cfg.custom_hooks
    raw = _raw(path)
    src = str(tmp_path / 'raw.pth')
    torch.save(raw, src)
    options = _small(path)
    options['model.backbone.init_cfg.checkpoint'] = src
    cfg.merge_from_dict(options)
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    model.backbone.init_weights()
    state = model.backbone.state_dict()
    expected = convert_checkpoint(dict(raw)).state_dict
    fresh = _fresh(path, state)
    assert set(state) - set(fresh) == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key
    if 'frozen' in _name(path):
        model.train()
        assert not model.backbone.training
        assert not any(p.requires_grad for p in model.backbone.parameters())
    with torch.no_grad():
        model.eval()
        feats = model.extract_feat(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [256] * 5


def _train_options(path: str, data: str, src: str) -> List[str]:
    small = _small(path)
    opts = [f'{k}={v}'.replace(' ', '') for k, v in small.items()]
    if _is_vit(path):  # the LSJ recipe wraps the set in a RepeatDataset
        opts += data_options(data, roots=('val', 'test')) + [
            f'train_dataloader.dataset.dataset.data_root={data}/',
            'train_dataloader.dataset.times=1',
            'train_dataloader.dataset.dataset.pipeline.2.scale=(128,128)',
            'train_dataloader.dataset.dataset.pipeline.3.crop_size=(128,128)',
            'model.data_preprocessor.batch_augments.0.size=(128,128)',
            'train_cfg.val_interval=2']
    else:
        scales = '[(128,96)]'
        aug = 'train_dataloader.dataset.pipeline.3.transforms'
        opts += data_options(data) + [
            f'{aug}.0.0.scales={scales}', f'{aug}.1.0.scales={scales}',
            f'{aug}.1.1.crop_size=(64,64)', f'{aug}.1.2.scales={scales}',
            'optim_wrapper.type=OptimWrapper',  # AMP needs a GPU
            'train_cfg.val_begin=2']
    return opts + [
        'train_dataloader.batch_size=1', 'train_cfg.max_epochs=1',
        'default_hooks.logger.interval=1',
        'default_hooks.checkpoint.interval=1', 'randomness.seed=0',
        f'model.backbone.init_cfg.checkpoint={src}']


@pytest.mark.slow
@pytest.mark.parametrize('path', CONFIGS, ids=map(_name, CONFIGS))
def test_mim_train_dinov3(path, tiny_coco, tmp_path):  # noqa: F811
    """`mim train mmdet CONFIG` for two iterations from the raw official
    file: exit 0, finite losses, a checkpoint; at iteration 0 every
    backbone tensor the file has comes from it (the hook's table); the
    frozen backbone is saved unchanged."""
    raw = _raw(path)
    src = str(tmp_path / 'raw.pth')
    torch.save(raw, src)
    expected = convert_checkpoint(dict(raw)).state_dict
    work = tmp_path / 'work'
    output = run_train(path, work, _train_options(path, tiny_coco, src))
    row = backbone_row(output)
    params, from_file = int(row.group(1)), int(row.group(3))
    trainable = [k for k in expected if k != 'rope_embed.periods']
    assert from_file == len(trainable), row.group(0)
    assert params >= from_file
    assert_losses_finite(work)
    last = sorted(glob.glob(str(work / 'epoch_*.pth')))[-1]
    saved = torch.load(last, map_location='cpu', weights_only=False)
    backbone = {k[len('backbone.'):]: v for k, v in
                saved['state_dict'].items() if k.startswith('backbone.')}
    assert set(expected) <= set(backbone)
    if 'frozen' in _name(path):
        for key, value in expected.items():
            assert torch.equal(backbone[key], value), key
