# Copyright (c) mmconv contributors. All rights reserved.
"""Verification against the target module itself (mmconv.verify): the
module built on the meta device, the comparison, and the one rule for
which target tensors must come from the file."""
import os
import pkgutil

import pytest
import torch

from mmconv import ConversionError
from mmconv.pipeline import FAMILIES, convert_checkpoint
from mmconv.spec import Family, ModelConfig, TargetModule
from mmconv.verify import (check_module, module_shapes, never_pretrained,
                           required_keys)
from tests.fixtures.sources import SOURCES

_FAMILY = Family('t', 't', never_pretrained=(r'^norm[0-2]\.', r'rel_pos'))


def test_required_keys_leave_out_never_pretrained_and_bn_counters():
    keys = ['conv.weight', 'bn.num_batches_tracked', 'norm0.weight',
            'norm3.weight', 'blocks.0.attn.rel_pos_h', 'bn.running_mean']
    assert required_keys(_FAMILY, keys) == [
        'conv.weight', 'norm3.weight', 'bn.running_mean']
    assert required_keys(None, keys) == [
        k for k in keys if not k.endswith('num_batches_tracked')]
    assert never_pretrained(_FAMILY, keys) == [
        'norm0.weight', 'blocks.0.attn.rel_pos_h']


def test_a_missing_package_leaves_the_result_unverified():
    """Without the module's package the check says so (no error)."""
    target = TargetModule('mmconv_no_such_package.models:Net',
                          lambda sd: {'width': 2}, lambda a: 'Net-2')
    check = check_module(target, {'w': torch.zeros(2)}, None)
    assert check.unchecked == 'mmconv_no_such_package is not installed'
    assert not check.complete
    assert check.describe() == ('Net-2 (not verified: '
                                'mmconv_no_such_package is not installed)')
    check = check_module(target._replace(kwargs=lambda sd: None,
                                         unknown='not a Net'), {}, None)
    assert check.what is None and check.describe() == 'not a Net'


def test_resnet_module_shapes_are_mmdet_resnet():
    """The meta-device module has the names and shapes of the real one."""
    resnet = pytest.importorskip('mmdet.models.backbones.resnet')
    target = FAMILIES['resnet'].module
    shapes = module_shapes(target, {'depth': 18})
    real = resnet.ResNet(depth=18).state_dict()
    assert shapes == {k: tuple(v.shape) for k, v in real.items()}
    assert module_shapes(target, {'depth': 18}) is shapes  # cached


def test_resnet_differences_are_reported_not_refused():
    pytest.importorskip('mmdet.models.backbones.resnet')
    import torchvision
    sd = torchvision.models.resnet18().state_dict()
    sd.pop('layer1.0.conv1.weight')
    sd.pop('bn1.num_batches_tracked')  # not required
    sd['layer2.0.bn1.weight'] = torch.zeros(3)
    sd['extra.weight'] = torch.zeros(1)
    conv = convert_checkpoint(sd, 'torchvision')
    check = conv.report.backbone
    assert check.args == {'depth': 18}
    assert check.missing == ['layer1.0.conv1.weight']
    assert check.unexpected == []  # outside the layout: dropped
    assert check.mismatched == ['layer2.0.bn1.weight [3] (expected [128])']
    assert check.describe().startswith('INCOMPLETE ResNet-18 backbone: 1 '
                                       'missing (first: layer1.0.conv1')
    assert f'warning:  {check.describe()}' in conv.summary()


@pytest.mark.parametrize('name', ['timm_vit', 'convnext', 'swin',
                                  'timm_swinv2'])
def test_each_family_checks_against_its_module(name):
    """A source of each strict family is complete; one tensor missing, one
    of another shape or one unknown is refused with one line naming it."""
    pytest.importorskip('mmdet.models')
    ckpt = SOURCES[name]().checkpoint
    conv = convert_checkpoint(ckpt, name)
    family = conv.family
    check = check_module(family.module, conv.state_dict, family)
    assert check.complete, check.describe()
    keys = list(conv.state_dict)
    # a tensor the module needs, renamed back to its source key
    source = {r.new: r.old for r in conv.report.kept}
    victim = next(k for k in reversed(keys)
                  if k in required_keys(family, [k]) and k in source
                  and 'blocks.0.' not in k and 'stages.0.0.' not in k)
    sd = conv.source
    missing = {k: v for k, v in sd.items() if k != source[victim]}
    with pytest.raises(ConversionError, match=r'not a consistent .*missing: '
                       + victim.replace('.', r'\.')):
        convert_checkpoint(missing, name)
    reshaped = dict(sd)
    reshaped[source[victim]] = torch.zeros(
        [n + 1 for n in sd[source[victim]].shape])
    with pytest.raises(ConversionError, match='mis-shaped: ' +
                       victim.replace('.', r'\.') + r' \['):
        convert_checkpoint(reshaped, name)


def test_vit_module_is_built_without_memory():
    """A ViT-L's worth of parameters costs nothing to check (meta)."""
    pytest.importorskip('mmdet.registry')
    target = FAMILIES['vit'].module
    shapes = module_shapes(target, dict(
        img_size=224, patch_size=16, in_channels=3, embed_dim=1024, depth=24,
        num_heads=1, mlp_ratio=4.0, qkv_bias=True, layer_scale=None,
        mlp='mlp', final_norm=False, window_size=0, global_attn_indexes=()))
    assert shapes['blocks.23.mlp.fc1.weight'] == (4096, 1024)
    assert shapes['pos_embed'] == (1, 196, 1024)
    assert 'blocks.0.attn.rel_pos_h' in shapes
    assert 'blocks.0.attn.rel_pos_h' not in required_keys(
        FAMILIES['vit'], shapes)


_DETR_CFG = 'mmdet::detr/detr_r50_8xb2-150e_coco.py'


def _config_target(model):
    return TargetModule('mmdet.registry:MODELS', None, None, strict=False,
                        config=lambda conv: model)


def test_a_config_target_is_the_model_of_its_config():
    """A config target: the config's model with the options, built by the
    registry on the meta device, the names and shapes of the real one;
    options never leak into the next build (the read config is kept)."""
    pytest.importorskip('mmdet.registry')
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmdet.registry import MODELS
    small = ModelConfig(_DETR_CFG, (('decoder.num_layers', 2),
                                    ('num_queries', 7)), 'DETR')
    target = _config_target(small)
    shapes = module_shapes(target, small)
    assert module_shapes(target, small) is shapes  # cached
    cfg = Config.fromfile(os.path.join(
        os.path.dirname(pkgutil.resolve_name('mmdet').__file__), '.mim',
        'configs', 'detr', 'detr_r50_8xb2-150e_coco.py'))
    cfg.merge_from_dict({'model.decoder.num_layers': 2,
                         'model.num_queries': 7})
    with DefaultScope.overwrite_default_scope('mmdet'):
        real = MODELS.build(cfg.model).state_dict()
    assert shapes == {k: tuple(v.shape) for k, v in real.items()}
    assert shapes['query_embedding.weight'] == (7, 256)
    assert 'decoder.layers.2.norms.0.weight' not in shapes
    plain = module_shapes(target, ModelConfig(_DETR_CFG))
    assert plain['query_embedding.weight'] == (100, 256)
    assert 'decoder.layers.5.norms.0.weight' in plain


def test_a_config_target_compares_the_conversion():
    """check_module with a config target: the conversion names the model
    (required: a config target without it is a TypeError); a config that
    is not there leaves the result unverified; ``initialised`` keys are not
    missing."""
    pytest.importorskip('mmdet.registry')
    small = ModelConfig(_DETR_CFG, (('decoder.num_layers', 1),
                                    ('encoder.num_layers', 1)), 'DETR-1')
    shapes = module_shapes(_config_target(small), small)
    sd = {k: torch.zeros(s) for k, s in shapes.items()
          if k != 'query_embedding.weight'}
    sd['bbox_head.fc_cls.weight'] = torch.zeros(3, 256)
    with pytest.raises(TypeError, match='with its conversion'):
        check_module(_config_target(small), sd, None)
    conv = object()  # the callable is handed the conversion
    check = check_module(_config_target(small), sd, None, conv)
    assert check.what == 'DETR-1' and check.missing == [
        'query_embedding.weight']
    assert check.mismatched == [
        'bbox_head.fc_cls.weight [3, 256] (expected [81, 256])']
    assert check.args == {'config': _DETR_CFG, 'options': dict(small.options)}
    left = small._replace(initialised=(r'^query_embedding\.', ))
    assert check_module(_config_target(left), sd, None, conv).missing == []
    gone = ModelConfig('mmdet::detr/no_such_config.py', title='gone')
    check = check_module(_config_target(gone), sd, None, conv)
    assert check.unchecked == 'config mmdet::detr/no_such_config.py not found'
    assert check.describe() == ('gone (not verified: config '
                                'mmdet::detr/no_such_config.py not found)')
    assert check_module(_config_target(None)._replace(unknown='no model'),
                        sd, None, conv).describe() == 'no model'
