# Copyright (c) mmconv contributors. All rights reserved.
"""Rules read both ways (:mod:`mmconv.reverse`): the templates, what is
refused, and the property that matters: every output layout derived from a
format's table (``--to detectron2``), run after that table, gives back the
source keys and tensors, for every ResNet depth."""
import re

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from mmconv.convert import apply_rules, derive, rename_key
from mmconv.ops import Fill, Flatten, Permute, SliceTokens
from mmconv.pipeline import FAMILIES, FORMATS, TARGETS, convert_state_dict
from mmconv.report import ConversionReport
from mmconv.reverse import is_reversible, rename, reverse_rule, reverse_rules
from mmconv.spec import Request, Rule
from tests.fixtures.detectron2_layouts import script_mapping

DEPTHS = (18, 34, 50, 101, 152)


# --- the mechanics -------------------------------------------------------------
def test_rename_reads_templates_and_reverses():
    rule = rename('res2.<block>.conv<n:[123]>.norm.', 'layer1.<block>.bn<n>.',
                  'res2 norm', prefix=r'^(?:backbone\.)?')
    assert rename_key('backbone.res2.10.conv3.norm.weight', (rule, )) == \
        ('layer1.10.bn3.weight', 'res2 norm')
    assert rename_key('res2.0.conv4.norm.weight', (rule, ))[0] is None
    back = reverse_rule(rule)
    assert rename_key('layer1.10.bn3.bias', (back, ))[0] == \
        'res2.10.conv3.norm.bias'
    # the regex of <n> travels to the reverse; the prefix does not
    assert rename_key('layer1.0.bn4.bias', (back, ))[0] is None
    assert rename_key('backbone.layer1.0.bn1.bias', (back, ))[0] is None
    # reversing twice gives the rule without its forward-only prefix
    again = reverse_rule(back)
    assert again.template == rule.template
    assert rename_key('res2.7.conv1.norm.x', (again, ))[0] == 'layer1.7.bn1.x'
    assert rename_key('backbone.res2.7.conv1.norm.x', (again, ))[0] is None


def test_other_spellings_are_read_not_written():
    rule = rename('stem.fc.', 'fc.', 'classifier', also=('linear.', ))
    assert rename_key('linear.weight', (rule, ))[0] == 'fc.weight'
    assert rename_key('stem.fc.weight', (rule, ))[0] == 'fc.weight'
    assert rename_key('fc.weight', reverse_rules((rule, )))[0] == \
        'stem.fc.weight'
    with pytest.raises(ValueError, match='literal'):
        rename('a.<i>.', 'b.<i>.', 'x', also=('c.<i>.', ))


def test_what_cannot_be_reversed_is_skipped_or_refused():
    drop = Rule(r'^head\.', None, 'head')
    plain = Rule(r'^a\.', 'b.', 'no templates')
    lossy = rename('pos_embed', 'pos_embed', 'slots',
                   ops=(SliceTokens(1), ))
    kept = rename('a.<i>.w', 'b.<i>.w', 'kept')
    # drops have nothing to bring back: skipped
    assert reverse_rules((drop, kept)) == (reverse_rule(kept), )
    with pytest.raises(ValueError, match='drops its tensor'):
        reverse_rule(drop)
    # a rename without templates or with a lossy op: refused
    for rule, why in ((plain, 'no templates'), (lossy, 'no reverse')):
        assert not is_reversible(rule)
        with pytest.raises(ValueError, match=why):
            reverse_rules((kept, rule))
    assert is_reversible(kept) and not is_reversible(drop)
    # placeholders must match on both sides
    with pytest.raises(ValueError, match='same placeholders'):
        rename('a.<i>.<j>.', 'b.<i>.', 'loses j')
    with pytest.raises(ValueError, match='twice'):
        rename('a.<i>.<i>.', 'b.<i>.', 'twice')


def test_ops_are_reversed_in_reverse_order():
    rule = rename('w.<i>', 'v.<i>', 'x', ops=(Flatten(), Permute((1, 0))))
    back = reverse_rule(rule)
    assert back.ops == (Permute((1, 0)).reverse(), Flatten().reverse())
    sd = {'w.0': torch.arange(6.).reshape(3, 2, 1, 1)}
    out = apply_rules(sd, (rule, ), ConversionReport('x', 'x'))
    assert torch.equal(out['v.0'], sd['w.0'].reshape(3, 2).t())
    restored = apply_rules(out, (back, ), ConversionReport('x', 'x'))
    assert list(restored) == ['w.0']
    assert torch.equal(restored['w.0'], sd['w.0'])


def test_unless_turns_a_drop_rule_off():
    rules = (Rule(r'^fc\.', None, 'dropped', unless='keep_fc'),
             Rule(r'^', '', 'kept'))
    sd = {'fc.weight': torch.ones(2), 'conv1.weight': torch.zeros(2)}
    for keep, kept in ((False, ['conv1.weight']),
                       (True, ['fc.weight', 'conv1.weight'])):
        report = ConversionReport('x', 'x')
        out = apply_rules(sd, rules, report, options=Request(keep_fc=keep))
        assert list(out) == kept
        assert [r.reason for r in report.dropped] == \
            ([] if keep else ['dropped'])


def test_derive_adds_what_is_absent_only():
    w = torch.randn(3)
    rules = (Rule(r'(\.bn\d\.)weight$', r'\1running_mean', 'mean',
                  ops=(Fill(0.0), )),
             Rule(r'(\.bn\d\.)weight$', r'\1running_var', 'var',
                  ops=(Fill(0.5), )))
    sd = {'a.bn1.weight': w, 'b.bn2.weight': w, 'b.bn2.running_mean':
          torch.ones(3), 'c.conv1.weight': w}
    added = derive(sd, rules)
    assert added == ['a.bn1.running_mean', 'a.bn1.running_var',
                     'b.bn2.running_var']
    assert list(sd)[-3:] == added
    assert torch.equal(sd['a.bn1.running_var'], torch.full((3, ), 0.5))
    assert torch.equal(sd['b.bn2.running_mean'], torch.ones(3))
    # aliases still get a tensor of their own each
    assert sd['a.bn1.running_mean'] is not sd['b.bn2.running_var']


# --- the ResNet tables: derived, and exactly detectron2's mapping ---------------
def _canonical(depth):
    """A torchvision ResNet-``depth`` key set (with ``fc``), one distinct
    small tensor per key."""
    with torch.device('meta'):
        keys = list(getattr(torchvision.models, f'resnet{depth}')(
            weights=None).state_dict())
    return {k: torch.full((2, ), float(i)) for i, k in enumerate(keys)}


def _reversible_pairs():
    """``(format, target)`` pairs whose target table is the reverse of the
    format's table, found from the registry."""
    pairs = []
    for name, fmt in FORMATS.items():
        try:
            back = reverse_rules(fmt.rules)
        except ValueError:
            continue  # not written to be reversed
        for target in FAMILIES[fmt.family].targets:
            rules = TARGETS[target].rules
            if rules and rules == back:
                pairs.append((name, target))
    return pairs


def test_the_detectron2_target_is_the_detectron2_format_reversed():
    assert _reversible_pairs() == [('detectron2', 'detectron2')]
    # and caffe2 (plain regexes) is not reversible: refused, not guessed
    with pytest.raises(ValueError, match='no templates'):
        reverse_rules(FORMATS['caffe2'].rules)


@pytest.mark.parametrize('depth', DEPTHS)
def test_forward_then_reverse_restores_keys_and_tensors(depth):
    """Engine level, every depth: canonical -> detectron2 (derived table) is
    convert-torchvision-to-d2.py's mapping, and the detectron2 format's
    table brings back every key, in order, and the very tensors; and the
    other way round."""
    fmt, target = FORMATS['detectron2'], TARGETS['detectron2']
    sd = _canonical(depth)
    d2 = apply_rules(sd, target.rules, ConversionReport('x', 'x'),
                     'detectron2')
    assert list(d2) == list(script_mapping(sd).values())
    back = apply_rules(d2, fmt.rules, ConversionReport('x', 'x'))
    assert list(back) == list(sd)
    assert all(back[k] is sd[k] for k in sd)
    again = apply_rules(back, target.rules, ConversionReport('x', 'x'))
    assert list(again) == list(d2) and all(again[k] is d2[k] for k in d2)
    # the prefixes detectron2 files put the backbone under are read too
    for prefix in ('backbone.bottom_up.', 'backbone.', 'module.'):
        wrapped = {prefix + k: v for k, v in d2.items()}
        assert list(apply_rules(wrapped, fmt.rules,
                                ConversionReport('x', 'x'))) == list(sd)


@pytest.mark.parametrize('depth', DEPTHS)
def test_pipeline_round_trips_every_reversible_pair(depth):
    """Through the whole pipeline, with ``--keep-fc``: torchvision ->
    detectron2 -> torchvision and detectron2 -> detectron2 give back the
    keys (in order) and tensors; without it the classifier is dropped with
    the target's reason."""
    sd = _canonical(depth)
    d2 = convert_state_dict(sd, Request('torchvision', 'detectron2',
                                        keep_fc=True)).state_dict
    assert list(d2) == list(script_mapping(sd).values())
    for fmt, target, src, want in (('detectron2', 'torchvision', d2, sd),
                                   ('detectron2', 'detectron2', d2, d2),
                                   ('torchvision', 'torchvision', sd, sd)):
        conv = convert_state_dict(src, Request(fmt, target, keep_fc=True))
        assert list(conv.state_dict) == list(want), (fmt, target)
        assert all(torch.equal(conv.state_dict[k], v)
                   for k, v in want.items())
        assert not conv.derived  # full BN statistics: nothing to derive
        conv = convert_state_dict(src, Request(fmt, target))
        assert [k for k in conv.state_dict if re.match(r'(stem\.)?fc\.', k)
                ] == []
        assert {r.reason for r in conv.report.dropped} == {
            'ImageNet classifier (not in the backbone; --keep-fc keeps it)'}
    conv = convert_state_dict(d2, Request('detectron2', 'mmdet'))
    assert list(conv.state_dict) == [k for k in sd if not
                                     k.startswith('fc.')]
    assert [(r.old, r.reason) for r in conv.report.dropped] == [
        (k, 'ImageNet classifier (not in the backbone; MMDetection '
         'backbones have none)') for k in ('stem.fc.weight', 'stem.fc.bias')]


_STAGE = st.sampled_from([(1, 2), (2, 3), (3, 4), (4, 5)])
_LEAF = st.sampled_from(['weight', 'bias', 'running_mean', 'running_var',
                         'num_batches_tracked'])


@settings(max_examples=200, deadline=None)
@given(stage=_STAGE, block=st.integers(0, 10**4), n=st.integers(1, 3),
       part=st.sampled_from(['conv', 'norm', 'shortcut', 'shortcut_norm']),
       leaf=_LEAF, prefix=st.sampled_from(['', 'backbone.', 'module.',
                                           'backbone.bottom_up.']))
def test_any_detectron2_backbone_key_round_trips(stage, block, n, part,
                                                 leaf, prefix):
    """Any block index, conv and leaf: detectron2 -> canonical -> detectron2
    gives back the key without its prefix."""
    s, r = stage
    d2 = {'conv': f'res{r}.{block}.conv{n}.{leaf}',
          'norm': f'res{r}.{block}.conv{n}.norm.{leaf}',
          'shortcut': f'res{r}.{block}.shortcut.{leaf}',
          'shortcut_norm': f'res{r}.{block}.shortcut.norm.{leaf}'}[part]
    canonical, _ = rename_key(prefix + d2, FORMATS['detectron2'].rules)
    assert canonical is not None and canonical.startswith(f'layer{s}.')
    assert rename_key(canonical, TARGETS['detectron2'].rules)[0] == d2
