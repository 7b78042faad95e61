# Copyright (c) mmconv contributors. All rights reserved.
"""Shipped configs: every one parses and builds; every self-supervised one
trains with `mim train mmdet` on a tiny COCO dataset from a raw checkpoint
in the source's real layout; a two-process gloo run trains and saves."""
import glob
import os
import re
import subprocess
import sys

import pytest
import torch

from mmconv import load_file
from mmconv.cli import preset_main
from tests.fixtures.mmpretrain_layouts import build_mmpretrain
from tests.fixtures.official_layouts import ALL_BUILDERS, save_layout
from tests.helpers.mim_train import (BIN, ROOT, assert_losses_finite,  # noqa
                                     backbone_row, data_options, run_train)
from tests.helpers.tiers import sweep

ALL_CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '**', '*.py'),
                               recursive=True))
SELFSUP = sorted(glob.glob(os.path.join(ROOT, 'configs', 'selfsup_pretrain',
                                        '*.py')))


def test_no_config_name_collides_with_mmdetection():
    """`mim train mmdet NAME` resolves a name it cannot find locally in the
    installed mmdet package: no shipped config may share a file name with
    one there (it would silently train MMDetection's config instead)."""
    import mmdet
    package = os.path.dirname(mmdet.__file__)
    theirs = {os.path.basename(p) for p in glob.glob(
        os.path.join(package, '.mim', 'configs', '**', '*.py'),
        recursive=True)}
    assert len(theirs) > 500  # the installed package ships its configs
    ours = {os.path.basename(p) for p in ALL_CONFIGS}
    assert not ours & theirs, sorted(ours & theirs)
    raw = [os.path.basename(p) for p in SELFSUP if 'converted' not in p]
    assert all('selfsup-raw' in name for name in raw), raw


def _name(path):
    return os.path.relpath(path, os.path.join(ROOT, 'configs'))


#: one config per directory in the fast tier
FAST_CONFIGS = (
    'convnext/mask-rcnn_convnext-t-p4-w7-official-raw-pre_fpn_amp-ms-crop-3x_'
    'coco.py', 'detr_family/dino-4scale_r50_official_coco.py',
    'dinov3/mask-rcnn_vit-b-dinov3-selfsup-raw-pre_simple-fpn_lsj-100e_'
    'coco.py',
    'selfsup_pretrain/mask-rcnn_r50-mocov2-selfsup-raw-pre_fpn_1x_coco.py',
    'swin/mask-rcnn_swin-t-p4-w7-official-raw-pre_fpn_1x_coco.py',
    'vitdet/mask-rcnn_vit-b-mae-selfsup-raw-pre_simple-fpn_lsj-100e_coco.py')


@pytest.mark.parametrize('path', sweep(ALL_CONFIGS, FAST_CONFIGS,
                                       map(_name, ALL_CONFIGS)))
def test_config_parses_and_builds(path):
    """Config.fromfile + MMDetection's registry: a typo cannot ship."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(path)
    assert cfg.custom_imports == dict(imports=['mmconv'],
                                      allow_failed_imports=False)
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    assert model.backbone is not None


@pytest.fixture(scope='module')
def tiny_coco(module_tmp_path):
    out = module_tmp_path / 'tiny_coco'
    out.mkdir()
    subprocess.run([sys.executable, os.path.join(ROOT, 'tools',
                                                 'make_tiny_coco.py'),
                    str(out), '--images', '2', '--size', '128', '96'],
                   check=True)
    return str(out)


def _data_options(data):
    return data_options(data) + [
        'train_dataloader.batch_size=1', 'train_cfg.max_epochs=1',
        'train_cfg.val_begin=2', 'default_hooks.logger.interval=1',
        'default_hooks.checkpoint.interval=1', 'randomness.seed=0'
    ]


def _scale_option(cfg):
    pipeline = cfg.train_dataloader.dataset.pipeline
    i, step = next((i, s) for i, s in enumerate(pipeline)
                   if 'Resize' in s['type'])
    value = '[(128,80),(128,96)]' if step['type'] == 'RandomResize' \
        else '(128,96)'
    return f'train_dataloader.dataset.pipeline.{i}.scale={value}'


def _layout_for(path, init):
    """A checkpoint in the real layout of the source the config names."""
    base = os.path.basename(path)
    if 'mmpretrain' in base:
        return build_mmpretrain('BYOL' if 'byol' in base else 'SimCLR')
    want = {'mocov1': ('moco', 'v1'), 'mocov2': ('moco', 'v2'),
            'swav': ('swav', None), 'mocov3': ('mocov3', None),
            'densecl': ('densecl', None), 'simsiam': ('simsiam', None),
            'barlowtwins': ('barlowtwins', None),
            'vicreg': ('vicreg', None), 'dino': ('dino', 'teacher')}
    key = re.match(r'mask-rcnn_r50-([a-z0-9]+)-', base).group(1)
    name, variant = want[key]
    for build in ALL_BUILDERS:
        layout = build()
        if layout.name == name and (variant is None or
                                    variant in layout.variant):
            return layout
    raise LookupError(base)


def _run_train(path, data, tmp, extra=(), launcher=None):
    """`mim train mmdet CONFIG` with a raw (or converted) checkpoint."""
    from mmengine.config import Config
    cfg = Config.fromfile(path)
    init = cfg.model.backbone.init_cfg
    layout = _layout_for(path, init)
    src = save_layout(layout, str(tmp))
    ckpt = src
    if init.type == 'Pretrained':  # the pre-converted variants
        ckpt = str(tmp / 'converted.pth')
        assert preset_main('selfsup2mmdet', [src, ckpt]) == 0
    work = tmp / 'work'
    opts = _data_options(data) + [
        _scale_option(cfg), f'model.backbone.init_cfg.checkpoint={ckpt}'
    ] + list(extra)
    return layout, work, run_train(path, work, opts, launcher)


def _check_run(layout, work, output):
    # the load-check hook's table, logged before the first iteration
    row = backbone_row(output)
    params, changed, from_ckpt = row.group(1), row.group(2), row.group(3)
    # every backbone parameter at iteration 0 is bit-identical to the
    # tensor of its checkpoint (the raw file, or its converted copy)
    assert from_ckpt == params and int(changed) > 0
    assert_losses_finite(work)
    saved = load_file(str(work / 'epoch_1.pth'))
    # MMEngine's own loader (plain torch.load) reads it back too
    from mmengine.runner import CheckpointLoader
    again = CheckpointLoader.load_checkpoint(str(work / 'epoch_1.pth'))
    assert again['state_dict'].keys() == saved['state_dict'].keys()
    backbone = {k[len('backbone.'):]: v
                for k, v in saved['state_dict'].items()
                if k.startswith('backbone.')}
    assert set(backbone) == set(layout.backbone)


@pytest.mark.slow
@pytest.mark.parametrize('path', SELFSUP, ids=map(_name, SELFSUP))
def test_mim_train(path, tiny_coco, tmp_path):
    """`mim train mmdet CONFIG` for two iterations: exit 0, finite losses,
    checkpoint loads back, backbone at iteration 0 equals the source."""
    layout, work, output = _run_train(path, tiny_coco, tmp_path)
    _check_run(layout, work, output)


@pytest.mark.slow
def test_two_process_gloo_train(tiny_coco, tmp_path):
    """`--launcher pytorch` on 2 CPU ranks (gloo, SyncBN -> BN)."""
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    path = os.path.join(ROOT, 'configs', 'selfsup_pretrain',
                        'mask-rcnn_r50-mocov2-selfsup-raw-pre_fpn_1x_coco.py')
    layout, work, output = _run_train(
        path, tiny_coco, tmp_path, launcher=port, extra=[
            'model.backbone.norm_cfg.type=BN', 'env_cfg.dist_cfg.backend=gloo',
            # each rank sees one of the two images per epoch
            'train_cfg.max_epochs=2', 'train_cfg.val_begin=3',
            'model_wrapper_cfg.type=MMDistributedDataParallel',
            'model_wrapper_cfg.device_ids=None'
        ])
    assert 'Distributed launcher: pytorch' in output or \
        'world_size: 2' in output or 'Distributed training: True' in output
    _check_run(layout, work, output)


@pytest.mark.slow
def test_resumed_run_with_the_hook_completes(tiny_coco, tmp_path):
    """Two iterations, then `resume=True` for two more: every backbone
    tensor has moved away from the pre-training file, and the hook compares
    with the resumed checkpoint instead (no false 'still random')."""
    path = os.path.join(ROOT, 'configs', 'selfsup_pretrain',
                        'mask-rcnn_r50-mocov2-selfsup-raw-pre_fpn_1x_coco.py')
    thaw = ['model.backbone.frozen_stages=-1']  # the stem moves too
    layout, work, output = _run_train(path, tiny_coco, tmp_path, extra=thaw)
    saved = load_file(str(work / 'epoch_1.pth'))['state_dict']
    moved = [k for k, v in layout.backbone.items()
             if v.is_floating_point()
             and torch.equal(saved[f'backbone.{k}'], v)]
    assert not moved, moved[:5]
    _, _, output = _run_train(path, tiny_coco, tmp_path, extra=thaw + [
        'resume=True', 'train_cfg.max_epochs=2'])
    row = re.search(r'^backbone\s+(\d+)\s+(\d+)\s+(\S+)\s+(\S+)', output,
                    re.M)
    assert row and row.group(3) == row.group(1), output[-3000:]
    assert row.group(4).rstrip(',').endswith('epoch_1.pth'), row.group(0)
    assert (work / 'epoch_2.pth').is_file()
