# Copyright (c) mmconv contributors. All rights reserved.
"""ViTLayerDecayOptimizerConstructor: the shipped ViTDet config's optimizer
gets detectron2's layer-wise learning rates (``get_vit_lr_decay_rate``:
``rate ** (depth + 1 - layer_id)``) on top of MMEngine's paramwise rules."""
import glob
import os

import pytest
import torch

from mmconv.models import ViTLayerDecayOptimizerConstructor, vit_layer_id

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
MAE = glob.glob(os.path.join(ROOT, 'configs', 'vitdet', '*-mae-*.py'))[0]


def _detector(depth: int = 3):
    """The shipped MAE ViTDet Mask R-CNN with a tiny ViT, no pre-training."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS
    cfg = Config.fromfile(MAE)
    cfg.merge_from_dict({
        'model.backbone.embed_dim': 64, 'model.backbone.depth': depth,
        'model.backbone.num_heads': 2, 'model.backbone.window_size': 4,
        'model.backbone.global_attn_indexes': [depth - 1],
        'model.backbone.rel_pos_img_size': 128,
        'model.backbone.init_cfg': None,
        'model.neck.backbone_channel': 64,
    })
    init_default_scope('mmdet')
    return cfg, MODELS.build(cfg.model)


@pytest.mark.parametrize('name, layer', [
    ('backbone.patch_embed.proj.weight', 0), ('backbone.pos_embed', 0),
    ('backbone.cls_token', 0), ('backbone.reg_token', 0),
    ('backbone.blocks.0.norm1.weight', 1),
    ('backbone.blocks.11.mlp.fc2.bias', 12),
    ('backbone.blocks.3.attn.rel_pos_h', 4), ('backbone.norm.weight', 13),
    ('neck.simfp_2.0.weight', 13), ('roi_head.bbox_head.fc_cls.weight', 13),
    ('backbone_blocks.0.weight', 13),
])
def test_layer_id_is_detectron2s_rule(name, layer):
    assert vit_layer_id(name, 12) == layer


def test_shipped_config_gets_layer_wise_learning_rates():
    """Built through MMEngine's build_optim_wrapper from the shipped
    config: every parameter's lr is base_lr x 0.7 ** (depth + 1 -
    layer_id), and MMEngine's own rules (no decay on norms, biases and
    pos_embed) still hold."""
    from mmengine.optim import build_optim_wrapper
    depth = 3
    cfg, model = _detector(depth)
    assert cfg.optim_wrapper.constructor == \
        'ViTLayerDecayOptimizerConstructor'
    rate = cfg.optim_wrapper.paramwise_cfg.decay_rate
    assert rate == 0.7
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    base_lr = cfg.optim_wrapper.optimizer.lr
    names = {id(p): n for n, p in model.named_parameters()}
    seen = set()
    for group in wrapper.optimizer.param_groups:
        (param, ) = group['params']
        name = names[id(param)]
        seen.add(name)
        if name.startswith('backbone.blocks.'):
            layer = int(name.split('.')[2]) + 1
        elif name in ('backbone.pos_embed', 'backbone.patch_embed.proj.weight',
                      'backbone.patch_embed.proj.bias'):
            layer = 0
        else:
            layer = depth + 1
        assert group['lr'] == pytest.approx(
            base_lr * rate**(depth + 1 - layer), rel=1e-12), name
        if name.endswith('.bias') or 'norm' in name or name.endswith(
                'pos_embed'):
            assert group['weight_decay'] == 0, name
    assert seen == {n for n, p in model.named_parameters()
                    if p.requires_grad}
    # the first block learns 0.7**3 times slower than the heads
    lrs = {names[id(g['params'][0])]: g['lr']
           for g in wrapper.optimizer.param_groups}
    assert lrs['backbone.blocks.0.attn.qkv.weight'] == pytest.approx(
        lrs['rpn_head.rpn_cls.weight'] * rate**depth)


def test_custom_lr_mult_is_kept_and_multiplied():
    """A ``custom_keys`` lr_mult and the decay factor multiply."""
    from mmengine.optim import build_optim_wrapper
    _, model = _detector(2)
    wrapper = build_optim_wrapper(model, dict(
        type='OptimWrapper', constructor='ViTLayerDecayOptimizerConstructor',
        optimizer=dict(type='AdamW', lr=1.0, weight_decay=0.1),
        paramwise_cfg=dict(decay_rate=0.5, num_layers=2,
                           custom_keys={'pos_embed': dict(lr_mult=0.1)})))
    pos = next(g for g in wrapper.optimizer.param_groups
               if g['params'][0] is model.backbone.pos_embed)
    assert pos['lr'] == pytest.approx(0.1 * 0.5**3)


@pytest.mark.parametrize('rate', [None, 0, 1.5])
def test_bad_decay_rate_is_one_clear_error(rate):
    cfg = dict(type='OptimWrapper',
               optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.1))
    with pytest.raises(ValueError, match='decay_rate in \\(0, 1\\]'):
        ViTLayerDecayOptimizerConstructor(cfg, dict(decay_rate=rate))


def test_model_without_blocks_needs_num_layers():
    cfg = dict(type='OptimWrapper',
               optimizer=dict(type='SGD', lr=0.1))
    constructor = ViTLayerDecayOptimizerConstructor(cfg,
                                                    dict(decay_rate=0.9))
    with pytest.raises(ValueError, match='set paramwise_cfg.num_layers'):
        constructor(torch.nn.Linear(2, 2))
