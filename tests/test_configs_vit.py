# Copyright (c) mmconv contributors. All rights reserved.
"""configs/vitdet: every config parses and builds (a tiny ViT through
cfg-options), and (slow) trains two iterations with `mim train mmdet` on a
tiny COCO set from a raw checkpoint in the source's official layout."""
import glob
import os

import pytest
import torch

from tests.fixtures import vit_layouts as L
from tests.helpers.mim_train import (ROOT, assert_losses_finite,
                                     backbone_row, data_options, run_train)
from tests.test_configs import tiny_coco  # noqa: F401 (fixture)
from tests.helpers.tiers import sweep

VIT_CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', 'vitdet',
                                            '*.py')))


def _name(path: str) -> str:
    return os.path.basename(path)


def _layout_for(path: str) -> L.ViTLayout:
    """A raw checkpoint of the source the config names (small model)."""
    base = _name(path)
    if '-mae-' in base:
        return L.build_mae_training()
    if '-dino-' in base:
        return L.build_dino_teacher()
    if '-mocov3-' in base:
        return L.build_mocov3_vit()
    if '-dinov2-reg4-' in base:
        return L.build_dinov2_hub('vits14_reg4')
    if 's14-dinov2-' in base:
        return L.build_dinov2_teacher()  # chunked teacher_checkpoint.pth
    if '-dinov2-' in base:
        return L.build_dinov2_hub('vits14')
    raise LookupError(base)


def _tiny_vit(layout: L.ViTLayout) -> dict:
    """cfg-options that make the config's ViT the layout's size."""
    args = layout.vitdet
    return {
        'model.backbone.img_size': args['img_size'],
        'model.backbone.embed_dim': args['embed_dim'],
        'model.backbone.depth': args['depth'],
        'model.backbone.num_heads': args['num_heads'],
        'model.backbone.window_size': 4,
        'model.backbone.global_attn_indexes': [args['depth'] - 1],
        'model.backbone.rel_pos_img_size': 128,
        'model.neck.backbone_channel': args['embed_dim'],
    }


def test_names_are_selfsup_raw_and_unique():
    import mmdet
    names = [_name(p) for p in VIT_CONFIGS]
    assert len(names) == 7 and all('selfsup-raw' in n for n in names)
    theirs = {os.path.basename(p) for p in glob.glob(os.path.join(
        os.path.dirname(mmdet.__file__), '.mim', 'configs', '**', '*.py'),
        recursive=True)}
    assert not set(names) & theirs


@pytest.mark.parametrize('path', sweep(VIT_CONFIGS, (
    'mask-rcnn_vit-b-mae-selfsup-raw-pre_simple-fpn_lsj-100e_coco.py',
    'mask-rcnn_vit-b14-dinov2-reg4-selfsup-raw-pre_'
    'simple-fpn_lsj-100e_coco.py'),
    map(_name, VIT_CONFIGS)))
def test_vit_config_parses_and_builds(path, tmp_path):
    """The config builds with a tiny ViT; its init loads the raw file."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(path)
    assert cfg.custom_imports == dict(imports=['mmconv'],
                                      allow_failed_imports=False)
    backbone = cfg.model.backbone
    assert backbone.type == 'ViTDet'
    assert backbone.init_cfg.type == 'SelfSupPretrained'
    patch = backbone.patch_size
    from mmconv.models import simple_fpn_strides
    strides = simple_fpn_strides(patch)
    assert cfg.model.rpn_head.anchor_generator.strides == strides
    assert cfg.model.roi_head.bbox_roi_extractor.featmap_strides == \
        strides[:4]
    assert cfg.model.roi_head.mask_roi_extractor.featmap_strides == \
        strides[:4]
    assert cfg.model.neck.backbone_channel == backbone.embed_dim
    if 'dinov2' in path:
        assert patch == 14 and backbone.layer_scale is not None
    layout = _layout_for(path)
    assert layout.vitdet['patch_size'] == patch
    src = str(tmp_path / layout.filename)
    torch.save(layout.checkpoint, src)
    options = _tiny_vit(layout)
    options['model.backbone.init_cfg.checkpoint'] = src
    cfg.merge_from_dict(options)
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    model.backbone.init_weights()
    state = model.backbone.state_dict()
    for key, value in layout.expected.items():
        if key.startswith('norm.'):
            assert key not in state  # final_norm=False (ViTDet)
            continue
        assert torch.equal(state[key], value), key


def _train_options(data: str, layout: L.ViTLayout, src: str) -> list:
    opts = [f'{k}={v}'.replace(' ', '') for k, v in _tiny_vit(layout).items()]
    # the LSJ recipe wraps the training set in a RepeatDataset
    opts += data_options(data, roots=('val', 'test')) + [
        f'train_dataloader.dataset.dataset.data_root={data}/',
        'train_dataloader.dataset.times=1',
        'train_dataloader.dataset.dataset.pipeline.2.scale=(128,128)',
        'train_dataloader.dataset.dataset.pipeline.3.crop_size=(128,128)',
        'model.data_preprocessor.batch_augments.0.size=(128,128)',
        'train_dataloader.batch_size=1', 'train_cfg.max_epochs=1',
        'train_cfg.val_interval=2', 'default_hooks.logger.interval=1',
        'default_hooks.checkpoint.interval=1', 'randomness.seed=0',
        f'model.backbone.init_cfg.checkpoint={src}',
    ]
    return opts


def _run_vit_train(path: str, data: str, tmp, launcher: int = None,
                   extra=()) -> tuple:
    """Train the config for a couple of iterations from a raw file in the
    source's layout: `mim train mmdet` (one process) or `torchrun` on two
    CPU ranks (gloo) through tests/helpers/cpu_dist_train.py."""
    layout = _layout_for(path)
    src = str(tmp / layout.filename)
    torch.save(layout.checkpoint, src)
    work = tmp / 'work'
    opts = _train_options(data, layout, src) + list(extra)
    return layout, work, run_train(path, work, opts, launcher)


def _check_vit_run(layout: L.ViTLayout, work, output: str) -> None:
    """Finite losses, a saved checkpoint, and every pre-trained backbone
    tensor at iteration 0 from the raw file (the hook's table)."""
    row = backbone_row(output)
    depth = layout.vitdet['depth']
    # every parameter but the (zero-initialised) relative position tables
    assert int(row.group(3)) == int(row.group(1)) - 2 * depth, row.group(0)
    assert_losses_finite(work)
    last = sorted(glob.glob(str(work / 'epoch_*.pth')))[-1]
    saved = torch.load(last, map_location='cpu', weights_only=False)
    backbone = {k[len('backbone.'):] for k in saved['state_dict']
                if k.startswith('backbone.')}
    expected = {k for k in layout.expected if not k.startswith('norm.')}
    rel = {f'blocks.{i}.attn.rel_pos_{a}' for i in range(depth)
           for a in 'hw'}
    assert backbone == expected | rel


@pytest.mark.slow
@pytest.mark.parametrize('path', VIT_CONFIGS, ids=map(_name, VIT_CONFIGS))
def test_mim_train_vit(path, tiny_coco, tmp_path):  # noqa: F811
    """`mim train mmdet CONFIG` for two iterations from the raw file: exit
    0, finite losses, checkpoint saved, every pre-trained backbone tensor
    at iteration 0 bit-identical to the raw file's."""
    layout, work, output = _run_vit_train(path, tiny_coco, tmp_path)
    _check_vit_run(layout, work, output)


@pytest.mark.slow
def test_two_process_gloo_train_vit(tiny_coco, tmp_path):  # noqa: F811
    """The DINOv2 ViT-S/14 config (layer scale, registers, patch 14, the
    layer-wise lr decay constructor) on two CPU ranks with gloo."""
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    path = next(p for p in VIT_CONFIGS if '-s14-dinov2-reg4-' in p)
    layout, work, output = _run_vit_train(
        path, tiny_coco, tmp_path, launcher=port, extra=[
            'env_cfg.dist_cfg.backend=gloo',
            # each rank sees one of the two images per epoch
            'train_cfg.max_epochs=2', 'train_cfg.val_interval=3',
            'model_wrapper_cfg.type=MMDistributedDataParallel',
            'model_wrapper_cfg.device_ids=None',
        ])
    assert 'Distributed training: True' in output or \
        'world_size: 2' in output, output[-3000:]
    _check_vit_run(layout, work, output)
