# Copyright (c) mmconv contributors. All rights reserved.
"""The one registry: every format, one parametrised round trip; a format
declared at run time works in every face without touching any module."""
import pytest
import torch
from torch import nn

from mmconv import FAMILIES, FORMATS, TARGETS
from mmconv.detect import candidates
from mmconv.pipeline import convert_checkpoint
from tests.fixtures.sources import SOURCES


#: Formats registered only to be recognised and refused with their reason
#: (``facts['not_supported']``: RT-DETR, which MMDetection 3.3 lacks).
REFUSED = {n for n, f in FORMATS.items() if f.facts.get('not_supported')}


def test_every_registered_format_has_a_source_builder():
    """A format added to the registry without a test source fails here."""
    assert set(SOURCES) == set(FORMATS) - REFUSED
    for fmt in FORMATS.values():
        assert fmt.family in FAMILIES and fmt.sentinels, fmt.name
        assert all(t in TARGETS for t in FAMILIES[fmt.family].targets)


@pytest.mark.parametrize('name', [n for n in FORMATS if n not in REFUSED])
def test_format_round_trip(name):
    """Build the source layout, auto-detect it (uniquely), convert, load
    strictly into the target; every kept tensor equals its source tensor
    bit for bit unless surgery changed it (then it is listed), and every
    source tensor is kept, aliased or dropped with a reason."""
    source = SOURCES[name]()
    conv = convert_checkpoint(source.checkpoint)
    assert conv.format.name == name, conv.report.detection
    found = candidates(list(conv.source))
    assert found[0].name == name
    assert len(found) == 1 or found[1].rank < found[0].rank, found
    target = source.build_target()
    result = target.load_state_dict(conv.state_dict, strict=False)
    assert not result.unexpected_keys
    missing = {k for k in result.missing_keys
               if not k.endswith('num_batches_tracked')}
    assert missing == set(source.left_at_init)
    changed = {k for k, _, _, _ in conv.changed}
    report = conv.report
    for rec in report.kept:
        if rec.new in changed:
            continue
        assert torch.equal(conv.state_dict[rec.new], conv.source[rec.old]), \
            rec
    accounted = [r.old for r in report.kept + report.aliases + report.dropped]
    assert sorted(accounted) == sorted(conv.source)
    assert all(r.reason for r in report.dropped)


# --- a toy format declared at run time ------------------------------------
class ToyNet(nn.Module):
    """The target of the toy format: a conv and a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)


@pytest.fixture
def toy_format():
    """A new family with one format, registered for the test only."""
    from mmconv import unregister
    from mmconv.spec import Family, SourceFormat, register

    def scale_fc(conv, request):
        """Surgery: the toy source stores fc.weight transposed."""
        w = conv.state_dict['fc.weight']
        conv.state_dict['fc.weight'] = w.t().contiguous()
        conv.changed.append(('fc.weight', tuple(w.shape),
                             tuple(w.t().shape), 'transposed'))

    family = Family('toy', 'Toy network')
    fmt = SourceFormat(
        'toy', 'toy', 'Toy layout',
        rules=((r'^toy\.body\.', 'conv.', 'toy body'),
               (r'^toy\.head_t\.', 'fc.', 'toy head (transposed)'),
               (r'^toy\.aux\.', None, 'auxiliary head')),
        sentinels=(r'^toy\.body\.weight$', r'^toy\.head_t\.weight$'),
        containers=('toy_weights', ), surgery=(scale_fc, ))
    register(family, fmt)
    yield fmt
    unregister(fmt, family)


def _toy_checkpoint(net: ToyNet) -> dict:
    return {'toy_weights': {
        'toy.body.weight': net.conv.weight.detach().clone(),
        'toy.body.bias': net.conv.bias.detach().clone(),
        'toy.head_t.weight': net.fc.weight.detach().t().contiguous(),
        'toy.head_t.bias': net.fc.bias.detach().clone(),
        'toy.aux.weight': torch.zeros(3)}, 'epoch': 3}


def _assert_same(a: nn.Module, b: nn.Module) -> None:
    for (k, v), (_, w) in zip(a.state_dict().items(),
                              b.state_dict().items()):
        assert torch.equal(v, w), k


def test_a_new_format_needs_no_other_change(toy_format, tmp_path, capsys):
    """Declared at run time, the toy format is listed by `mmconv formats`,
    auto-detected by `inspect`, converted by `convert` and loaded by
    SelfSupPretrained from the raw file."""
    from mmconv.cli import main
    from mmconv.init import SelfSupPretrainedInit
    torch.manual_seed(0)
    ref = ToyNet()
    src = tmp_path / 'toy.pth'
    torch.save(_toy_checkpoint(ref), src)
    assert main(['formats']) == 0
    out = capsys.readouterr().out
    assert 'Toy network' in out and 'toy ' in out
    assert main(['inspect', str(src)]) == 0
    assert 'format:   toy (Toy layout); detected' in capsys.readouterr().out
    dst = tmp_path / 'out.pth'
    assert main(['convert', str(src), str(dst)]) == 0
    assert 'changed:  fc.weight [4, 2] -> [2, 4]: transposed' in \
        capsys.readouterr().out
    got = ToyNet()
    got.load_state_dict(torch.load(dst, weights_only=True)['state_dict'],
                        strict=True)
    _assert_same(got, ref)
    net = ToyNet()
    SelfSupPretrainedInit(checkpoint=str(src))(net)
    _assert_same(net, ref)
    assert main(['convert', str(src), str(tmp_path / 'o2.pth'),
                 '--style', 'caffe']) == 2  # not a ResNet option
    assert 'does not apply to Toy network' in capsys.readouterr().err
