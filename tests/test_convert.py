# Copyright (c) mmconv contributors. All rights reserved.
"""The pure conversion core: rules, invariants, report."""
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mmconv import (FORMATS, ConversionError, KeyCollisionError,
                    convert_checkpoint, convert_state_dict, rename_key)
from mmconv.formats.resnet import resnet_depth


def _resnet50(check):
    """A ResNet-50 backbone: compared complete with MMDetection's ResNet,
    or (no MMDetection installed: the light legs) recognised but not
    verified."""
    return check.args == {'depth': 50} and (
        check.complete or 'not installed' in check.unchecked)


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
    assert _resnet50(report.backbone)
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
    assert _resnet50(result.report.backbone)


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
    assert _resnet50(result.report.backbone)
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
def test_resnet_depth_of_torchvision_keys(depth):
    """The depth a real torchvision ResNet's keys imply (fc or not); a
    stage short of a block implies none."""
    import torchvision
    keys = list(getattr(torchvision.models, f'resnet{depth}')().state_dict())
    assert resnet_depth(keys) == depth
    assert resnet_depth(k for k in keys if not k.startswith('fc.')) == depth
    assert resnet_depth(k for k in keys if not k.startswith('layer4.1.')) \
        is None


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


# --- merge (several source keys -> one) and fan-out (one -> several) ------
def _engine():
    from mmconv.convert import apply_rules
    from mmconv.ops import Chunk, Concatenate
    from mmconv.report import ConversionReport
    from mmconv.spec import Rule
    return apply_rules, Chunk, Concatenate, ConversionReport, Rule


def _qkv_source(layers=2, dim=4):
    gen = torch.Generator().manual_seed(0)
    return {f'layer.{i}.{part}.{p}': torch.randn(
        (dim, dim) if p == 'weight' else (dim, ), generator=gen)
        for i in range(layers) for part in ('value', 'query', 'key')
        for p in ('weight', 'bias')}


def test_merge_concatenates_parts_in_declared_order():
    apply_rules, _, Concatenate, Report, Rule = _engine()
    rule = Rule(r'^layer\.(\d+)\.(?P<part>query|key|value)\.(\w+)$',
                r'blocks.\1.qkv.\3', 'q, k, v fused', ops=(Concatenate(0), ),
                parts=('query', 'key', 'value'))
    src = _qkv_source()
    report, changes = Report('t', 't'), []
    out = apply_rules(src, (rule, ), report, 't', changes=changes)
    assert list(out) == ['blocks.0.qkv.weight', 'blocks.0.qkv.bias',
                         'blocks.1.qkv.weight', 'blocks.1.qkv.bias']
    for i in range(2):
        for p in ('weight', 'bias'):
            q, k, v = (src[f'layer.{i}.{n}.{p}']
                       for n in ('query', 'key', 'value'))
            assert torch.equal(out[f'blocks.{i}.qkv.{p}'],
                               torch.cat([q, k, v]))
            # the order is q, k, v whatever the source order
            assert not torch.equal(out[f'blocks.{i}.qkv.{p}'],
                                   torch.cat([v, q, k]))
    assert sorted(r.old for r in report.kept) == sorted(src)
    assert {r.new for r in report.kept} == set(out)
    assert [c.key for c in changes] == list(out)
    assert changes[0].before == (4, 4) and changes[0].after == (12, 4)


def test_merge_with_a_missing_part_is_refused():
    apply_rules, _, Concatenate, Report, Rule = _engine()
    rule = Rule(r'^layer\.(\d+)\.(?P<part>query|key|value)\.(\w+)$',
                r'blocks.\1.qkv.\3', 'q, k, v fused', ops=(Concatenate(0), ),
                parts=('query', 'key', 'value'))
    src = _qkv_source(layers=1)
    del src['layer.0.key.bias']
    with pytest.raises(ConversionError, match='blocks.0.qkv.bias.*not key'):
        apply_rules(src, (rule, ), Report('t', 't'), 't')


def test_merge_of_two_different_tensors_for_one_part_collides():
    apply_rules, _, Concatenate, Report, Rule = _engine()
    rule = Rule(r'^(?:copy\.)?layer\.(\d+)\.(?P<part>query|key|value)\.'
                r'(\w+)$', r'blocks.\1.qkv.\3', 'q, k, v fused',
                ops=(Concatenate(0), ), parts=('query', 'key', 'value'))
    src = _qkv_source(layers=1)
    same = dict(src, **{'copy.layer.0.key.bias': src['layer.0.key.bias']})
    report = Report('t', 't')
    apply_rules(same, (rule, ), report, 't')
    assert [r.old for r in report.aliases] == ['copy.layer.0.key.bias']
    other = dict(src, **{'copy.layer.0.key.bias': torch.ones(4)})
    with pytest.raises(KeyCollisionError):
        apply_rules(other, (rule, ), Report('t', 't'), 't')


def test_fan_out_splits_or_copies_one_tensor():
    apply_rules, Chunk, _, Report, Rule = _engine()
    split = Rule(r'^qkv\.weight$', ('q.weight', 'k.weight', 'v.weight'),
                 'split', ops=(Chunk(3), ))
    shared = Rule(r'^head\.weight$', tuple(f'heads.{i}.weight'
                                           for i in range(3)), 'shared')
    src = {'qkv.weight': torch.arange(24.).reshape(6, 4),
           'head.weight': torch.randn(2, 2)}
    report = Report('t', 't')
    out = apply_rules(src, (split, shared), report, 't')
    assert torch.equal(torch.cat([out['q.weight'], out['k.weight'],
                                  out['v.weight']]), src['qkv.weight'])
    assert all(out[f'heads.{i}.weight'] is src['head.weight']
               for i in range(3))
    assert [(r.old, r.new) for r in report.kept] == [
        ('qkv.weight', 'q.weight'), ('head.weight', 'heads.0.weight')]
    assert [r.new for r in report.copies] == [
        'k.weight', 'v.weight', 'heads.1.weight', 'heads.2.weight']
    assert 'copies' in report.summary()
    wrong = Rule(r'^qkv\.weight$', ('q.weight', 'k.weight'), 'split',
                 ops=(Chunk(3), ))
    with pytest.raises(ConversionError, match='3 tensors for 2 keys'):
        apply_rules(src, (wrong, ), Report('t', 't'), 't')


def test_chain_rules_keeps_merged_and_copied_records():
    apply_rules, _, Concatenate, Report, Rule = _engine()
    from mmconv.convert import chain_rules
    merge = Rule(r'^layer\.(\d+)\.(?P<part>query|key|value)\.(\w+)$',
                 r'blocks.\1.qkv.\3', 'q, k, v fused',
                 ops=(Concatenate(0), ), parts=('query', 'key', 'value'))
    fan = Rule(r'^blocks\.(\d+)\.qkv\.(\w+)$',
               (r'a.\1.qkv.\2', r'b.\1.qkv.\2'), 'twice')
    src = _qkv_source(layers=1)
    report = Report('t', 't')
    out = apply_rules(src, (merge, ), report, 't')
    out = chain_rules(out, (fan, ), report, 't2')
    assert sorted(r.old for r in report.kept) == sorted(src)
    assert {r.new for r in report.kept} == {'a.0.qkv.weight',
                                            'a.0.qkv.bias'}
    assert {r.new for r in report.copies} == {'b.0.qkv.weight',
                                              'b.0.qkv.bias'}


@pytest.mark.slow
def test_mmpretrain_models_import_with_transformers_installed():
    """mmpretrain 1.2's BLIP import breaks on transformers>=4.5x; with
    mmconv imported first, mmpretrain.models imports (the multimodal
    models become mmpretrain's own placeholders)."""
    import subprocess
    import sys
    pytest.importorskip('mmpretrain')
    code = ('import mmconv, mmpretrain.models; '
            'from mmpretrain.models import ConvNeXt; print("ok")')
    done = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == 'ok'
