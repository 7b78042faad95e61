# Copyright (c) mmconv contributors. All rights reserved.
"""torchvision <-> detectron2 <-> MMDetection ResNet conversions.

Every source is made here from real models with random weights (nothing is
downloaded): torchvision ResNets, detectron2 files in their documented
layouts, and Caffe2 MSRA-style blob pickles with the blob names detectron2's
``c2_model_loading.py`` reads.
"""
import glob
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from mmconv.cli import preset_main
from mmconv.formats.detectron2 import FROZEN_BN_EPS
from mmconv.allowlist import PICKLE_ALLOWLIST
from mmconv.reading import load_file
from mmconv.pipeline import convert_checkpoint, convert_file
from tests.fixtures.detectron2_layouts import (STAGES, msra_r50_blobs,
                                               script_mapping)
from tests.helpers.tiers import sweep

DEPTHS = (18, 34, 50, 101, 152)
X = None  # set lazily: the input all stage comparisons use


def _tv(depth: int, seed: int = 0) -> nn.Module:
    """torchvision ResNet-``depth``, random weights and BN statistics."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, f'resnet{depth}')(weights=None)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2)
            m.num_batches_tracked.fill_(seed + 3)
    return model.eval()


def _pickle_globals(path):
    """``(module, name)`` of every global a pickle file (our own output)
    asks for when loaded."""
    found = set()

    class Recorder(pickle.Unpickler):

        def find_class(self, module, name):
            found.add((module, name))
            return super().find_class(module, name)

    with open(path, 'rb') as f:
        Recorder(f, encoding='latin1').load()
    return found


def _stages_tv(model, x):
    """C2-C5 of a torchvision ResNet."""
    h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    outs = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        h = layer(h)
        outs.append(h)
    return outs


def _mmdet_resnet(depth, state_dict, style='pytorch'):
    """MMDetection's ResNet loaded strictly with ``state_dict``."""
    from mmdet.models import ResNet
    kw = {}
    if style == 'caffe':
        kw = dict(norm_cfg=dict(type='BN', requires_grad=False),
                  norm_eval=True)
    model = ResNet(depth=depth, out_indices=(0, 1, 2, 3), style=style, **kw)
    missing, unexpected = model.load_state_dict(state_dict, strict=True)
    assert not missing and not unexpected
    model.eval()  # mmdet's ResNet.train() returns None: not chainable
    return model


def _input():
    torch.manual_seed(123)
    return torch.randn(1, 3, 64, 96)


def _no_leftovers(directory):
    """No temporary ``.part`` files in ``directory``."""
    assert not glob.glob(os.path.join(str(directory), '.*.part'))


# --- torchvision -> detectron2 -> torchvision, every depth -----------------
@pytest.mark.parametrize('depth', sweep(DEPTHS, ('18', '50')))
def test_torchvision_to_d2_mapping_and_roundtrip(depth, tmp_path, capsys):
    """Real torchvision ResNet-depth -> detectron2 .pkl: the key set equals
    the documented mapping, values are the very numpy arrays, the pickle
    needs only numpy globals and reads as detectron2 reads it; back to
    torchvision every tensor (fc and num_batches_tracked included) is bit
    for bit the source, and loads strictly into torchvision."""
    model = _tv(depth, seed=depth)
    sd = model.state_dict()
    src, dst = tmp_path / f'resnet{depth}.pth', tmp_path / f'r{depth}.pkl'
    torch.save(sd, src)
    assert preset_main('torchvision2d2', [str(src), str(dst), '--keep-fc']) == 0
    out = capsys.readouterr().out
    assert 'FORMAT: "RGB"' in out and f'DEPTH: {depth}' in out
    assert 'PIXEL_MEAN: [123.675, 116.280, 103.530]' in out
    assert 'PIXEL_STD: [58.395, 57.120, 57.375]' in out
    assert f'model.backbone.stages.depth = {depth}' in out
    assert 'model.pixel_mean = [123.675, 116.280, 103.530]' in out
    if depth >= 50:
        assert 'STRIDE_IN_1X1: False' in out
        assert 'model.backbone.stages.stride_in_1x1 = False' in out
    else:
        assert 'RES2_OUT_CHANNELS: 64' in out

    # the file: only numpy globals; detectron2's reader (plain pickle,
    # latin1) sees {'model', '__author__'} -> "Detectron2 model zoo format"
    assert _pickle_globals(dst) <= PICKLE_ALLOWLIST
    with open(dst, 'rb') as f:
        obj = pickle.load(f, encoding='latin1')
    assert obj['__author__'] == 'torchvision'
    assert obj['matching_heuristics'] is True
    mapping = script_mapping(sd)
    assert set(obj['model']) == set(mapping.values())
    for k, new in mapping.items():
        arr = obj['model'][new]
        assert isinstance(arr, np.ndarray) and arr.dtype == sd[k].numpy().dtype
        assert np.array_equal(arr, sd[k].numpy()), k
    _no_leftovers(tmp_path)

    back = tmp_path / 'back.pth'
    assert preset_main('d2_to_mmdet', [str(dst), str(back), '--to', 'torchvision',
                             '--keep-fc']) == 0
    got = torch.load(back, weights_only=True)
    assert set(got) == set(sd)
    for k, v in sd.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
    fresh = getattr(torchvision.models, f'resnet{depth}')(weights=None)
    fresh.load_state_dict(got, strict=True)

    # without --keep-fc: the same minus the classifier (dropped, reported)
    conv = convert_checkpoint(load_file(str(src)), target='detectron2')
    assert set(conv.state_dict) == {v for k, v in mapping.items()
                                    if not k.startswith('fc.')}
    assert conv.meta['depth'] == depth and conv.report.backbone.complete
    assert {r.old for r in conv.report.dropped} == {'fc.weight', 'fc.bias'}


# --- numerical equivalence ---------------------------------------------------
@pytest.mark.parametrize('depth', (18, 50))
def test_stage_outputs_equal_via_d2_and_direct(depth, tmp_path, capsys):
    """torchvision ResNet vs MMDetection ResNet loaded from (a) torchvision
    -> detectron2 .pkl -> MMDetection and (b) torchvision -> MMDetection
    directly: identical C2-C5 in eval mode; the style read back from the
    detectron2 file is 'pytorch'."""
    model = _tv(depth, seed=1)
    src = tmp_path / 'tv.pth'
    torch.save(model.state_dict(), src)
    pkl, via, direct = (tmp_path / 'a.pkl', tmp_path / 'via.pth',
                        tmp_path / 'direct.pth')
    assert preset_main('torchvision2d2', [str(src), str(pkl)]) == 0
    assert preset_main('d2_to_mmdet', [str(pkl), str(via)]) == 0
    out = capsys.readouterr().out
    assert "style='pytorch'" in out and 'bgr_to_rgb=True' in out
    assert 'mean=[123.675, 116.280, 103.530]' in out
    convert_file(str(src), str(direct), 'torchvision')
    x = _input()
    with torch.no_grad():
        ref = _stages_tv(model, x)
        for path in (via, direct):
            ckpt = torch.load(path, weights_only=True)
            if path == via:
                assert ckpt['meta']['style'] == 'pytorch'
            outs = _mmdet_resnet(depth, ckpt['state_dict'])(x)
            for i, (a, b) in enumerate(zip(ref, outs)):
                assert torch.equal(a, b), (path.name, f'C{i + 2}')


def test_mmdet_back_to_torchvision_and_d2(tmp_path, capsys):
    """An MMDetection ResNet-50 (whole-detector file, backbone.* keys) ->
    torchvision: identical C2-C5; -> detectron2: the documented names and
    the same tensors."""
    from mmdet.models import ResNet
    torch.manual_seed(5)
    mm = ResNet(depth=50, out_indices=(0, 1, 2, 3))
    for m in mm.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2)
    mm.eval()
    sd = mm.state_dict()
    detector = {'state_dict': {**{f'backbone.{k}': v for k, v in sd.items()},
                               'neck.lateral_convs.0.conv.weight':
                               torch.zeros(256, 256, 1, 1),
                               'rpn_head.rpn_conv.weight':
                               torch.zeros(256, 256, 3, 3)},
                'meta': {'epoch': 12}}
    src = tmp_path / 'epoch_12.pth'
    torch.save(detector, src)
    tv_path, d2_path = tmp_path / 'tv.pth', tmp_path / 'd2.pkl'
    assert preset_main('mmdet2torchvision', [str(src), str(tv_path)]) == 0
    assert preset_main('mmdet2torchvision', [str(src), str(d2_path), '--to',
                                   'detectron2']) == 0
    out = capsys.readouterr().out
    assert 'ASSUMED' in out and 'STRIDE_IN_1X1: False' in out
    tv = torchvision.models.resnet50(weights=None)
    res = tv.load_state_dict(torch.load(tv_path, weights_only=True),
                             strict=False)
    assert res.missing_keys == ['fc.weight', 'fc.bias']
    assert not res.unexpected_keys
    tv.eval()
    x = _input()
    with torch.no_grad():
        for i, (a, b) in enumerate(zip(_stages_tv(tv, x), mm(x))):
            assert torch.equal(a, b), f'C{i + 2}'
    model = load_file(str(d2_path))['model']
    mapping = script_mapping(sd)
    assert set(model) == set(mapping.values())
    assert all(torch.equal(model[mapping[k]], v) for k, v in sd.items())


# --- Caffe2 (MSRA) blobs, stride in the 1x1 conv -----------------------------
class FrozenBN(nn.Module):
    """detectron2 FrozenBatchNorm2d semantics: fixed buffers, eval-mode
    batch norm with eps 1e-5; a Caffe2 file sets only weight/bias, so the
    statistics stay at their initial mean 0 / var 1 - eps."""

    def __init__(self, scale, bias):
        super().__init__()
        self.register_buffer('weight', torch.as_tensor(scale))
        self.register_buffer('bias', torch.as_tensor(bias))
        self.register_buffer('running_mean', torch.zeros(len(scale)))
        self.register_buffer('running_var',
                             torch.ones(len(scale)) - FROZEN_BN_EPS)

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var,
                            self.weight, self.bias, False, 0.0, FROZEN_BN_EPS)


class AffineBN(FrozenBN):
    """Caffe2's AffineChannel: ``x * scale + bias``."""

    def forward(self, x):
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class RefBottleneck(nn.Module):
    """A bottleneck with the stride in the first 1x1 conv (detectron2
    ``BottleneckBlock(stride_in_1x1=True)``), norms after every conv,
    projection shortcut on the first block of a stage."""

    def __init__(self, blobs, name, stride, norm):
        super().__init__()
        t = lambda k: torch.as_tensor(blobs[k])  # noqa: E731
        self.w = [t(f'{name}_branch2{c}_w') for c in 'abc']
        self.n = nn.ModuleList(norm(blobs[f'{name}_branch2{c}_bn_s'],
                                    blobs[f'{name}_branch2{c}_bn_b'])
                               for c in 'abc')
        self.stride = stride
        self.short = None
        if f'{name}_branch1_w' in blobs:
            self.short = t(f'{name}_branch1_w')
            self.short_n = norm(blobs[f'{name}_branch1_bn_s'],
                                blobs[f'{name}_branch1_bn_b'])

    def forward(self, x):
        out = F.relu(self.n[0](F.conv2d(x, self.w[0], stride=self.stride)))
        out = F.relu(self.n[1](F.conv2d(out, self.w[1], padding=1)))
        out = self.n[2](F.conv2d(out, self.w[2]))
        idt = x if self.short is None else self.short_n(
            F.conv2d(x, self.short, stride=self.stride))
        return F.relu(out + idt)


class RefResNet50(nn.Module):
    """Stem (7x7/2 conv, norm, relu, 3x3/2 max pool) and res2-res5 of
    stride-in-1x1 bottlenecks, straight from the Caffe2 blobs."""

    def __init__(self, blobs, norm=FrozenBN):
        super().__init__()
        self.conv1 = torch.as_tensor(blobs['conv1_w'])
        self.bn1 = norm(blobs['res_conv1_bn_s'], blobs['res_conv1_bn_b'])
        self.stages = nn.ModuleList(
            nn.Sequential(*[RefBottleneck(blobs, f'res{s + 2}_{b}',
                                          2 if b == 0 and s > 0 else 1, norm)
                            for b in range(n)])
            for s, n in enumerate(STAGES))

    def forward(self, x):
        h = F.relu(self.bn1(F.conv2d(x, self.conv1, stride=2, padding=3)))
        h = F.max_pool2d(h, 3, 2, 1)
        outs = []
        for stage in self.stages:
            h = stage(h)
            outs.append(h)
        return outs


def test_caffe2_msra_to_mmdet_caffe_style(tmp_path, capsys):
    """MSRA-style R-50.pkl (Caffe2 blob names, FrozenBN scale/bias only,
    old protocol-2 pickle) -> MMDetection: style 'caffe' chosen and reported,
    BGR/std-1 preprocessing printed, weights carried bit for bit, FrozenBN
    statistics 0 / 1-eps; MMDetection ResNet(style='caffe') equals the
    stride-in-1x1 reference exactly (and the AffineChannel form to float
    rounding); style='pytorch' would differ."""
    blobs, canonical = msra_r50_blobs()
    src, dst = tmp_path / 'R-50.pkl', tmp_path / 'r50_caffe.pth'
    with open(src, 'wb') as f:
        pickle.dump(blobs, f, protocol=2)
    assert preset_main('d2_to_mmdet', [str(src), str(dst), '-v']) == 0
    out = capsys.readouterr().out
    assert 'format:   caffe2' in out
    assert 'style:    caffe — Caffe2 blobs' in out and 'ASSUMED' not in out
    assert "style='caffe'" in out and 'bgr_to_rgb=False' in out
    assert 'mean=[103.530, 116.280, 123.675]' in out
    assert 'std=[1.000, 1.000, 1.000]' in out
    assert "norm_cfg=dict(type='BN', requires_grad=False)" in out
    assert 'res2_0_branch2a_bn_s -> layer1.0.bn1.weight' in out
    assert 'res2_0_branch1_bn_b -> layer1.0.downsample.1.bias' in out
    assert 'FrozenBN: 53 norm layers' in out

    ckpt = torch.load(dst, weights_only=True)
    sd = ckpt['state_dict']
    assert ckpt['meta']['style'] == 'caffe'
    assert ckpt['meta']['dropped_by_reason'] and \
        sorted(r for r in ckpt['meta']['dropped_by_reason']) == sorted([
            'ImageNet classifier (not in the backbone; MMDetection '
            'backbones have none)',
            'stem conv bias of some Caffe2 files (~1e-9; the ResNet conv '
            'has none, detectron2 does not load it)',
            'SGD momentum (detectron2 drops *_momentum too)'])
    for c2, name in canonical.items():
        assert torch.equal(sd[name], torch.as_tensor(blobs[c2])), c2
    means = [v for k, v in sd.items() if k.endswith('running_mean')]
    variances = [v for k, v in sd.items() if k.endswith('running_var')]
    assert len(means) == 53 and all(not m.any() for m in means)
    assert all(torch.equal(v, torch.ones_like(v) - FROZEN_BN_EPS)
               for v in variances)

    x = _input()
    with torch.no_grad():
        ours = _mmdet_resnet(50, sd, style='caffe')(x)
        ref = RefResNet50(blobs)(x)
        affine = RefResNet50(blobs, AffineBN)(x)
        wrong = _mmdet_resnet(50, sd, style='pytorch')(x)
    for i in range(4):
        assert torch.isfinite(ref[i]).all() and ref[i].abs().max() > 0
        assert torch.equal(ours[i], ref[i]), f'C{i + 2}'
        assert torch.allclose(ours[i], affine[i], rtol=1e-4,
                              atol=1e-4 * ref[i].abs().max().item())
    assert not torch.allclose(wrong[1], ref[1])


def test_frozen_bn_statistics_are_derived_not_source_records():
    """Only norm layers without statistics get them (0 / 1-eps, one tensor
    each), counted per layer; they are outputs, not source records, and
    come out under detectron2 names with ``--to detectron2``."""
    blobs, _ = msra_r50_blobs()
    n = blobs['res2_0_branch2a_bn_s'].shape[0]
    blobs['res2_0_branch2a_bn_rm'] = np.full(n, 0.25, np.float32)
    blobs['res2_0_branch2a_bn_riv'] = np.full(n, 4.0, np.float32)
    src = {k: torch.as_tensor(v) for k, v in blobs.items()}
    conv = convert_checkpoint(src)
    assert conv.format.name == 'caffe2' and conv.meta['frozen_bn_filled'] == 52
    sd = conv.state_dict
    assert torch.equal(sd['layer1.0.bn1.running_mean'], torch.full((n, ), 0.25))
    assert torch.equal(sd['layer1.0.bn1.running_var'], torch.full((n, ), 4.0))
    assert torch.equal(sd['layer1.0.bn2.running_var'],
                       torch.ones(n) - FROZEN_BN_EPS)
    assert sd['bn1.running_mean'] is not sd['bn1.running_var']
    assert len(conv.derived) == 2 * 52
    assert 'FrozenBN: 52 norm layers had scale/bias only' in conv.summary()
    records = conv.report.kept + conv.report.dropped + conv.report.aliases
    assert sorted(r.old for r in records) == sorted(src)
    assert not any(r.new in conv.derived for r in conv.report.kept)
    d2 = convert_checkpoint(src, target='detectron2').state_dict
    assert torch.equal(d2['res3.1.conv3.norm.running_var'],
                       torch.ones_like(d2['res3.1.conv3.norm.weight']) -
                       FROZEN_BN_EPS)


def test_detectron2_model_zoo_and_bare_files(tmp_path, capsys,
                                             tv_resnet50):
    """Model-zoo style {'model': backbone.bottom_up.* + FPN/RPN/ROI heads +
    pixel_mean/std, '__author__': 'Detectron2 Model Zoo'} (.pkl) and a bare
    ``res2...`` .pth: every backbone tensor carried (FrozenBN statistics
    included), detector parts dropped with reasons, style reported as
    assumed caffe unless given, preprocessing read from pixel_mean/std."""
    sd = {k: v for k, v in tv_resnet50.state_dict().items()
          if not k.endswith('num_batches_tracked') and not k.startswith('fc')}
    mapping = script_mapping(sd)
    model = {f'backbone.bottom_up.{mapping[k]}': v.numpy()
             for k, v in sd.items()}
    model.update({
        'backbone.fpn_lateral2.weight': np.zeros((256, 256, 1, 1), 'f4'),
        'proposal_generator.rpn_head.conv.weight': np.zeros((256, 256, 3, 3),
                                                            'f4'),
        'roi_heads.box_predictor.cls_score.weight': np.zeros((81, 1024),
                                                             'f4'),
        'pixel_mean': np.array([103.53, 116.28, 123.675],
                               'f4').reshape(3, 1, 1),
        'pixel_std': np.ones((3, 1, 1), 'f4')})
    src = tmp_path / 'model_final_f10217.pkl'
    with open(src, 'wb') as f:
        pickle.dump({'model': model, '__author__': 'Detectron2 Model Zoo'}, f)
    dst = tmp_path / 'zoo.pth'
    assert preset_main('d2_to_mmdet', [str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert 'style:    caffe (ASSUMED)' in out and "style='caffe'" in out
    assert 'warning:  style' in out
    assert 'BGR mean [103.530, 116.280, 123.675] std [1.000, 1.000, 1.000]' \
        in out and 'bgr_to_rgb=False' in out
    assert 'FPN (detector neck)' in out and 'detector head' in out
    got = torch.load(dst, weights_only=True)['state_dict']
    assert set(got) == set(sd)
    assert all(torch.equal(got[k], v) for k, v in sd.items())

    dst2 = tmp_path / 'zoo_tv.pth'
    assert preset_main('d2_to_mmdet', [str(src), str(dst2), '--style', 'pytorch']) == 0
    out = capsys.readouterr().out
    assert 'style:    pytorch — given' in out and "style='pytorch'" in out

    bare = tmp_path / 'bare.pth'
    torch.save({mapping[k]: v for k, v in sd.items()}, bare)
    dst3 = tmp_path / 'bare_mm.pth'
    assert preset_main('d2_to_mmdet', [str(bare), str(dst3)]) == 0
    got = torch.load(dst3, weights_only=True)['state_dict']
    assert all(torch.equal(got[k], v) for k, v in sd.items())
    assert 'complete ResNet-50 backbone' in capsys.readouterr().out


def test_selfsup_to_d2(tmp_path, capsys):
    """A MoCo v2 training checkpoint (official layout) -> detectron2 .pkl:
    the query encoder's backbone under the documented names, heads, key
    encoder and queue dropped."""
    from tests.fixtures.official_layouts import build_moco_v2, save_layout
    layout = build_moco_v2()
    src = save_layout(layout, str(tmp_path))
    dst = tmp_path / 'moco.pkl'
    assert preset_main('torchvision2d2', [src, str(dst)]) == 0
    assert 'format:   moco' in capsys.readouterr().out
    obj = load_file(str(dst))
    assert obj['__author__'] == 'mmconv:moco'
    mapping = script_mapping(layout.backbone)
    assert set(obj['model']) == set(mapping.values())
    assert all(torch.equal(obj['model'][mapping[k]], v)
               for k, v in layout.backbone.items())


# --- bad input ---------------------------------------------------------------
class _Evil:
    """Unpickling it would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


def _write_pickle(path, obj, protocol=4):
    with open(path, 'wb') as f:
        pickle.dump(obj, f, protocol=protocol)
    return str(path)


@pytest.mark.parametrize('preset', ['d2_to_mmdet', 'torchvision2d2'])
def test_bad_pkl_refused(preset, tmp_path, capsys):
    """Code-running, wrong-object and truncated pickles: non-zero exit with
    one clear line, the marker never created, no output, no temp file."""
    marker = tmp_path / 'PWNED'
    out = tmp_path / 'out.pkl'
    cases = {
        'evil.pkl': (_write_pickle(tmp_path / 'evil.pkl',
                                   {'model': {'x': _Evil(marker)},
                                    '__author__': 'x'}), 4, 'posix.system'),
        'set.pkl': (_write_pickle(tmp_path / 'set.pkl',
                                  {'model': {'a': {1, 2}}}), 3,
                    'holds no tensors'),
        'lists.pkl': (_write_pickle(tmp_path / 'lists.pkl',
                                    {'model': {'w': [1.0, 2.0]},
                                     '__author__': 'x'}), 3,
                      'holds no tensors'),
        'counter.pkl': (_write_pickle(tmp_path / 'counter.pkl',
                                      __import__('collections').Counter('ab')),
                        4, 'collections.Counter'),
        'other.pkl': (_write_pickle(tmp_path / 'other.pkl',
                                    {'model': {'head.w': np.zeros(3, 'f4')},
                                     '__author__': 'x'}), 5,
                      'unknown checkpoint layout'),
    }
    good = _write_pickle(tmp_path / 'good.pkl', {
        'model': {'stem.conv1.weight': np.zeros((64, 3, 7, 7), 'f4')},
        '__author__': 'x'})
    data = open(good, 'rb').read()
    trunc = tmp_path / 'truncated.pkl'
    trunc.write_bytes(data[:len(data) // 2])
    cases['truncated.pkl'] = (str(trunc), 3, 'truncated')
    for name, (path, code, text) in cases.items():
        rc = preset_main(preset, [path, str(out)])
        err = capsys.readouterr().err
        assert rc == code, (name, err)
        assert text in err and err.startswith('error: ') \
            and err.count('\n') == 1, (name, err)
        assert not marker.exists() and not out.exists(), name
    _no_leftovers(tmp_path)


def test_scripts_and_output_name(tmp_path, capsys):
    """The scripts' entry points (the script files themselves run in
    tests/test_console_scripts.py): one line on error, no traceback;
    detectron2 output must be named .pkl (usage error: exit 2, nothing
    written)."""
    marker = tmp_path / 'PWNED'
    evil = _write_pickle(tmp_path / 'R-50.pkl', _Evil(marker), protocol=2)
    assert preset_main('d2_to_mmdet', [evil, str(tmp_path / 'o.pth')]) == 4
    err = capsys.readouterr().err
    assert 'Traceback' not in err and err.count('\n') == 1
    assert not marker.exists()
    src = tmp_path / 'tv.pth'
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), src)
    assert preset_main('torchvision2d2',
                       [str(src), str(tmp_path / 'o.pth')]) == 2
    assert '.pkl' in capsys.readouterr().err
    assert not (tmp_path / 'o.pth').exists()
    assert preset_main('torchvision2d2',
                       [str(src), str(tmp_path / 'o.pkl')]) == 0
    out = capsys.readouterr().out
    assert 'complete ResNet-18 backbone' in out
    assert 'RES2_OUT_CHANNELS: 64' in out


def test_mmconv_console_convert_to(tmp_path, tv_resnet50):
    """`mmconv convert SRC DST --to detectron2` and back, via cli.main."""
    from mmconv.cli import main
    src = tmp_path / 'tv.pth'
    torch.save(tv_resnet50.state_dict(), src)
    pkl, back = tmp_path / 'r50.pkl', tmp_path / 'back.pth'
    assert main(['convert', str(src), str(pkl), '--to', 'detectron2']) == 0
    assert main(['convert', str(pkl), str(back)]) == 0
    got = torch.load(back, weights_only=True)['state_dict']
    for k, v in tv_resnet50.state_dict().items():
        if not k.startswith('fc.'):
            assert torch.equal(got[k], v), k
