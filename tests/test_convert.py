# Copyright (c) mmconv contributors. All rights reserved.
"""The pure conversion core: rules, invariants, report."""
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mmconv import (FORMATS, ConversionError, KeyCollisionError,
                    convert_checkpoint, convert_state_dict, rename_key)
from mmconv.arch import check_resnet, resnet_keys


def _moco(sd):
    ckpt = {f'module.encoder_q.{k}': v for k, v in sd.items()}
    ckpt.update({f'module.encoder_k.{k}': v.clone() for k, v in sd.items()})
    ckpt['module.queue'] = torch.randn(128, 16)
    ckpt['module.queue_ptr'] = torch.zeros(1, dtype=torch.long)
    return {'epoch': 200, 'arch': 'resnet50', 'state_dict': ckpt,
            'optimizer': {'state': {}, 'param_groups': []}}


def test_moco_keeps_query_encoder_drops_rest(tv_resnet50):
    """MoCo: encoder_q kept without fc, encoder_k/queue dropped, reported."""
    sd = tv_resnet50.state_dict()
    result = convert_checkpoint(_moco(sd), 'moco')
    expected = {k: v for k, v in sd.items() if not k.startswith('fc.')}
    assert set(result.state_dict) == set(expected)
    for k, v in expected.items():
        assert result.state_dict[k] is v  # no copy, same tensor
    report = result.report
    assert len(report.kept) == len(expected)
    assert len(report.dropped) == 2 + len(sd) + 2
    reasons = report.dropped_by_reason()
    assert reasons['key (momentum) encoder'] == len(sd)
    assert reasons['MoCo projection head (fc / MLP)'] == 2
    assert report.ignored_entries == ['epoch', 'arch', 'optimizer']
    assert report.backbone.complete and report.backbone.depth == 50
    assert report.mapping['module.encoder_q.layer4.2.bn3.weight'] == \
        'layer4.2.bn3.weight'


def test_every_source_tensor_is_accounted_for(tv_resnet50):
    """kept + dropped + aliases == source keys, for a MoCo file."""
    ckpt = _moco(tv_resnet50.state_dict())
    report = convert_checkpoint(ckpt).report
    seen = [r.old for r in report.kept + report.dropped + report.aliases]
    assert sorted(seen) == sorted(ckpt['state_dict'])


def test_mmdet_format_is_identity(tv_resnet50):
    """Converting an already-converted file changes nothing."""
    sd = {k: v for k, v in tv_resnet50.state_dict().items()
          if not k.startswith('fc.')}
    first = convert_checkpoint({'state_dict': sd, 'meta': {}})
    assert first.report.format == 'mmdet'
    again = convert_checkpoint({'state_dict': first.state_dict})
    assert list(again.state_dict) == list(sd)
    assert all(again.state_dict[k] is sd[k] for k in sd)
    assert not again.report.dropped and not again.report.renamed


def test_torchvision_drops_classifier(tv_resnet50):
    """A bare torchvision state dict: fc dropped, the rest kept as is."""
    result = convert_checkpoint(dict(tv_resnet50.state_dict()))
    assert result.report.format == 'torchvision'
    assert [r.old for r in result.report.dropped] == ['fc.weight', 'fc.bias']
    assert result.report.backbone.complete


def test_aliases_of_one_tensor_are_merged():
    """Two names for the same tensor become one key and are reported."""
    w = torch.randn(64, 3, 7, 7)
    sd = {'backbone.conv1.weight': w, 'encoder_q.0.conv1.weight': w,
          'queue2': torch.randn(2, 2)}
    result = convert_state_dict(sd, 'densecl')
    assert list(result.state_dict) == ['conv1.weight']
    assert [(r.old, r.new) for r in result.report.aliases] == \
        [('encoder_q.0.conv1.weight', 'conv1.weight')]


def test_collision_of_different_tensors_raises():
    """Two different tensors under one name is an error naming both."""
    sd = {'backbone.conv1.weight': torch.zeros(2),
          'encoder_q.0.conv1.weight': torch.ones(2)}
    with pytest.raises(KeyCollisionError, match='encoder_q.0.conv1.weight'):
        convert_state_dict(sd, 'densecl')


def test_wrong_format_is_an_error_with_hint(tv_resnet50):
    """A SwAV file converted as MoCo: empty result, hint names swav."""
    swav = {f'module.{k}': v for k, v in tv_resnet50.state_dict().items()
            if not k.startswith('fc.')}
    swav['module.prototypes.weight'] = torch.randn(3000, 128)
    swav['module.projection_head.0.weight'] = torch.randn(2048, 2048)
    with pytest.raises(ConversionError, match="looks like 'swav'"):
        convert_checkpoint(swav, 'moco')
    assert convert_checkpoint(swav).report.format == 'swav'


def test_prefix_selects_and_strips(tv_resnet50):
    """prefix='backbone.' on a whole-detector state dict."""
    sd = {f'backbone.{k}': v for k, v in tv_resnet50.state_dict().items()
          if not k.startswith('fc.')}
    sd['roi_head.bbox_head.fc_cls.weight'] = torch.randn(81, 1024)
    result = convert_checkpoint({'state_dict': sd}, prefix='backbone.')
    assert result.report.format == 'mmdet'
    assert result.report.backbone.complete
    with pytest.raises(ConversionError, match='prefix'):
        convert_checkpoint({'state_dict': sd}, prefix='encoder.')


def test_rules_are_anchored():
    """Rules only match at the start of keys."""
    assert rename_key('neck.module.encoder_q.conv1.weight', 'moco')[0] is None
    assert rename_key('module.encoder_q.conv1.weight', 'moco')[0] == \
        'conv1.weight'
    for fmt in FORMATS.values():
        for rule in fmt.rules:  # Rule, or a plain 3-tuple
            assert rule[0].startswith('^'), (fmt.name, rule[0])


@pytest.mark.parametrize('depth', [18, 34, 50, 101, 152])
def test_resnet_key_set_matches_torchvision(depth):
    """arch.resnet_keys equals a real torchvision ResNet minus fc."""
    import torchvision
    model = getattr(torchvision.models, f'resnet{depth}')()
    keys = [k for k in model.state_dict() if not k.startswith('fc.')]
    assert resnet_keys(depth) == keys
    check = check_resnet(keys)
    assert check.depth == depth and check.complete
    check = check_resnet(keys[:-7] + ['extra.weight'])
    assert not check.complete and check.unexpected == ['extra.weight']


_segment = st.text('abcdefgh', min_size=1, max_size=4)
_key = st.lists(_segment, min_size=1, max_size=4).map('.'.join)


@settings(max_examples=200, deadline=None)
@given(keys=st.lists(_key, min_size=1, max_size=30, unique=True),
       prefix=st.sampled_from(['backbone.', 'neck.', 'head.', '']))
def test_property_no_tensor_lost_or_altered(keys, prefix):
    """For random key sets, kept tensors are the source tensors, every key
    is accounted for, and collisions of different tensors always raise."""
    sd = {prefix + k: torch.full((1, ), float(i)) for i, k in enumerate(keys)}
    # 'mmpretrain' keeps backbone.* -> '*' and drops everything else
    try:
        result = convert_state_dict(sd, 'mmpretrain')
    except ConversionError:
        assert not any(k.startswith('backbone.') and
                       not k.startswith('backbone.fc.') for k in sd)
        return
    report = result.report
    assert sorted(r.old for r in report.kept + report.dropped +
                  report.aliases) == sorted(sd)
    for r in report.kept:
        assert result.state_dict[r.new] is sd[r.old]


@settings(max_examples=200, deadline=None)
@given(keys=st.lists(_key, min_size=1, max_size=20, unique=True),
       data=st.data())
def test_property_collisions_always_caught(keys, data):
    """A key present under both densecl prefixes with different values
    always raises; with the same tensor it is merged."""
    keys = [k for k in keys if not k.startswith('fc.')]  # the classifier
    assume(keys)  # slot, which the ResNet family drops by design
    dup = data.draw(st.sampled_from(keys))
    sd = {f'backbone.{k}': torch.full((1, ), float(i))
          for i, k in enumerate(keys)}
    same = data.draw(st.booleans())
    other = sd[f'backbone.{dup}'] if same else torch.full((1, ), -1.0)
    sd[f'encoder_q.0.{dup}'] = other
    if same:
        result = convert_state_dict(sd, 'densecl')
        assert len(result.state_dict) == len(keys)
        assert [r.old for r in result.report.aliases] == [f'encoder_q.0.{dup}']
    else:
        with pytest.raises(KeyCollisionError):
            convert_state_dict(sd, 'densecl')
