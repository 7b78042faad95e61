# Copyright (c) mmconv contributors. All rights reserved.
"""DETR-family official checkpoints -> MMDetection 3.x detectors.

Source checkpoints are synthesized from key manifests recorded from the
official code (``tests/fixtures/detr_manifests``); the targets are built from
MMDetection's own configs (mmconv's ``configs/detr_family`` where the neck
needs ``bias=True``). Outputs of the official models on seeded weights are in
``tests/fixtures/detr_outputs`` (recorded once with the official code).
"""
import json
import os
import re
import sys

import pytest
import torch

from functools import partial

from mmconv import load_file
from mmconv.cli import preset_main
from mmconv.detect import detect_format
from mmconv.errors import ConversionError, UnknownFormatError
from mmconv.formats import FORMATS, format_names
from mmconv.formats.detr import (COCO_CATEGORY_IDS, DETR_DETECTOR,
                                 FAMILY_CONFIG_MODELS, PROPOSAL_OBJECTNESS,
                                 coco_classes, detector_config, detr_variant,
                                 official_config)
from mmconv.ops import apply
from mmconv.pipeline import convert_checkpoint
from mmconv.verify import check_module, module_shapes

#: tools/model_converters/detr_family2mmdet.py
main = partial(preset_main, 'detr_family2mmdet')
from tests.fixtures.detr_checkpoints import (CASES, build_detector,
                                             load_manifest, manifest_names,
                                             synthesize_checkpoint)
from tests.fixtures.sources import SOURCES
from tests.helpers.tiers import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
OUTPUTS = os.path.join(ROOT, 'tests', 'fixtures', 'detr_outputs')

@pytest.fixture(scope='module')
def converted(module_tmp_path):
    """manifest -> (source checkpoint, CLI output file), made on demand."""
    tmp = module_tmp_path
    cache = {}

    def get(name):
        if name not in cache:
            ckpt = synthesize_checkpoint(load_manifest(name))
            src, dst = tmp / f'{name}.pth', tmp / f'{name}_mmdet.pth'
            torch.save(ckpt, src)
            assert main([str(src), str(dst)]) == 0
            cache[name] = ckpt, load_file(str(dst))
        return cache[name]

    return get


def test_manifests_are_consistent():
    """Every manifest names its source, and aliases point at earlier keys of
    the same shape."""
    assert sorted(CASES) == manifest_names()
    for name in manifest_names():
        m = load_manifest(name)
        assert m['num_keys'] == len(m['keys'])
        assert len(m['commit']) == 40 and m['repository']
        keys = list(m['keys'])
        for alias, target in m['aliases'].items():
            assert keys.index(target) < keys.index(alias)
            assert m['keys'][alias] == m['keys'][target]


@pytest.mark.parametrize('name', sweep(sorted(CASES), (
    'conditional_detr_r50', 'dab_deformable_detr_r50', 'detr_r101',
    'dino_5scale_r50', 'dn_deformable_detr_r50')))
def test_auto_detection(name):
    """Sentinel keys name the format; mmconv's ResNet detection does not
    claim any DETR-family checkpoint."""
    ckpt = synthesize_checkpoint(load_manifest(name))
    assert detect_format(ckpt['model']).name == CASES[name][0]
    with pytest.raises(UnknownFormatError):
        detect_format(ckpt['model'], family='resnet')


def test_resnet_checkpoints_are_not_detr():
    """A torchvision ResNet is not taken for a DETR-family checkpoint."""
    import torchvision
    sd = torchvision.models.resnet18().state_dict()
    with pytest.raises(UnknownFormatError):
        detect_format(sd, family='detr')
    assert detect_format(sd).name == 'torchvision'


@pytest.mark.parametrize('name', sweep(sorted(CASES), (
    'detr_r50', 'deformable_detr_refine_twostage_r50', 'dino_4scale_r50')))
def test_converts_and_loads_strictly(name, converted):
    """The CLI output loads into the model of the matching config with zero
    unexpected keys and no missing key (DN: exactly the query parts MMDetection
    has and DN-Deformable-DETR does not); every source tensor is kept, merged
    as an alias or dropped with a reason; kept tensors arrive unchanged
    except the classifier rows (remapped)."""
    fmt, config, left_at_init = CASES[name]
    ckpt, out = converted(name)
    model = build_detector(config)
    sd = out['state_dict']
    result = model.load_state_dict(sd, strict=False)
    assert result.unexpected_keys == []
    assert set(result.missing_keys) == left_at_init
    if not left_at_init:
        model.load_state_dict(sd, strict=True)
    # every tensor accounted for
    conv = convert_checkpoint(ckpt)
    rep = conv.report
    assert (len(rep.kept) + len(rep.aliases) + len(rep.dropped)
            == len(ckpt['model']))
    assert {r.new for r in rep.kept} == set(sd)
    assert out['meta']['source_format'] == fmt
    assert out['meta']['num_tensors'] == len(sd)
    changed = {c[0] for c in conv.changed}
    target = model.state_dict()
    for r in rep.kept + rep.aliases:
        assert target[r.new].shape == sd[r.new].shape
        if r.new not in changed:
            assert torch.equal(sd[r.new], ckpt['model'][r.old]), r.old
    assert all('cls_branches' in k or 'fc_cls' in k
               or k == 'dn_query_generator.label_embedding.weight'
               for k in changed)
    for key in changed:  # loaded values are the converted ones
        assert torch.equal(target[key], sd[key])


@pytest.mark.parametrize('name', ['deformable_detr_r50',
                                  'dn_deformable_detr_r50'])
def test_neck_bias_is_reported_not_dropped(name, converted):
    """The official input_proj conv biases are kept; the report says the neck
    needs bias=True; MMDetection's default neck (bias='auto') would see
    exactly these four tensors as unexpected."""
    ckpt, out = converted(name)
    conv = convert_checkpoint(ckpt)
    assert any("bias=True" in n for n in conv.notes)
    assert any("bias=True" in n for n in out['meta']['notes'])
    biases = {k for k in out['state_dict']
              if k.startswith('neck.') and k.endswith('conv.bias')}
    assert biases == {'neck.convs.0.conv.bias', 'neck.convs.1.conv.bias',
                      'neck.convs.2.conv.bias', 'neck.extra_convs.0.conv.bias'}
    default = build_detector('mmdet::deformable_detr/'
                     'deformable-detr_r50_16xb2-50e_coco.py')
    assert not any(k in default.state_dict() for k in biases)


def test_deformable_aliases_are_one_tensor():
    """Deformable DETR's shared heads and transformer.decoder.*_embed are
    recognised as one tensor each, not leftovers or collisions."""
    for name, n_alias in (('deformable_detr_refine_r50', 36),
                          ('deformable_detr_refine_twostage_r50', 56)):
        manifest = load_manifest(name)
        rep = convert_checkpoint(synthesize_checkpoint(manifest)).report
        assert len(rep.aliases) == n_alias
        # the keys the official code registers a second time, as recorded
        assert {r.old for r in rep.aliases} == set(manifest['aliases'])
        assert rep.dropped == []
    # plain: one Linear/MLP registered as class_embed.0..5 -> one tensor per
    # MMDetection branch (MMDetection shares them the same way)
    ckpt = synthesize_checkpoint(load_manifest('deformable_detr_r50'))
    sd = convert_checkpoint(ckpt).state_dict
    ptrs = {sd[f'bbox_head.cls_branches.{i}.weight'].data_ptr()
            for i in range(6)}
    assert len(ptrs) == 1


def test_different_tensors_under_alias_names_collide():
    """Two different values under names that must be one tensor: error."""
    ckpt = synthesize_checkpoint(load_manifest('deformable_detr_refine_r50'))
    key = 'transformer.decoder.bbox_embed.0.layers.0.weight'
    ckpt['model'][key] = ckpt['model'][key].clone() + 1
    with pytest.raises(ConversionError):
        convert_checkpoint(ckpt)


def test_dn_not_carried_is_explicit():
    """DN-Deformable-DETR: each tensor without an MMDetection equivalent is
    dropped with a 'NOT carried' reason and named in the notes."""
    ckpt = synthesize_checkpoint(load_manifest('dn_deformable_detr_r50'))
    conv = convert_checkpoint(ckpt)
    dropped = {r.old for r in conv.report.dropped}
    assert dropped == {
        'label_enc.weight', 'tgt_embed.weight', 'refpoint_embed.weight',
        *(f'transformer.decoder.{m}.layers.{i}.{p}'
          for m in ('ref_point_head', 'query_scale') for i in (0, 1)
          for p in ('weight', 'bias'))}
    assert all(r.reason.startswith('NOT carried') for r in
               conv.report.dropped)
    assert any('no exact MMDetection equivalent' in n for n in conv.notes)
    variant = conv.meta['variant']
    assert variant['with_box_refine'] and not variant['as_two_stage']


def test_class_remapping():
    """COCO id rows -> 80 contiguous classes (+ no-object last for DETR)."""
    assert len(COCO_CATEGORY_IDS) == 80 and max(COCO_CATEGORY_IDS) == 90
    w = torch.arange(92.)[:, None].expand(92, 3)
    out = apply(coco_classes(True, 'DETR'), w)
    assert out.shape == (81, 3)
    assert out[:80, 0].tolist() == list(map(float, COCO_CATEGORY_IDS))
    assert out[80, 0] == 91
    assert apply(coco_classes(False, 'sigmoid'), torch.arange(91.)).tolist(
    ) == list(map(float, COCO_CATEGORY_IDS))
    assert apply(PROPOSAL_OBJECTNESS, torch.arange(91.))[0] == 0
    with pytest.raises(ConversionError):
        apply(coco_classes(True, 'DETR'), torch.zeros(21, 3))


def test_keep_classes_and_unknown_layout(tmp_path):
    """--keep-classes keeps the rows; an unrelated file exits with code 5."""
    ckpt = synthesize_checkpoint(load_manifest('conditional_detr_r50'))
    conv = convert_checkpoint(ckpt, keep_classes=True)
    assert conv.state_dict['bbox_head.fc_cls.weight'].shape[0] == 91
    bad = tmp_path / 'r18.pth'
    import torchvision
    torch.save(torchvision.models.resnet18().state_dict(), bad)
    assert main([str(bad), str(tmp_path / 'x.pth')]) == 5
    assert not (tmp_path / 'x.pth').exists()
    assert main([str(bad), str(tmp_path / 'x.pth'), '--from', 'detr']) == 5


def test_script_and_safetensors(tmp_path, capsys):
    """detr_family2mmdet converts (the script file itself runs in
    tests/test_console_scripts.py); shared head tensors are written as
    copies to safetensors."""
    ckpt = synthesize_checkpoint(load_manifest('deformable_detr_r50'))
    src = tmp_path / 'ddetr.pth'
    torch.save(ckpt, src)
    dst = tmp_path / 'ddetr.safetensors'
    assert main([str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert 'deformable-detr_r50_official_coco.py' in out
    assert 'bias=True' in out
    out = load_file(str(dst))
    assert len(out['state_dict']) == 561


@pytest.mark.parametrize('fmt', ['auto', 'deformable_detr'])
def test_mmconv_convert_command(tmp_path, converted, fmt):
    """``mmconv convert`` takes DETR-family sources (auto-detected after the
    backbone formats, or named with --from) and writes exactly what
    detr_family2mmdet.py writes."""
    from mmconv.cli import main as mmconv_main
    name = 'deformable_detr_refine_twostage_r50'
    ckpt, expected = converted(name)
    src, dst = tmp_path / 'src.pth', tmp_path / 'out.pth'
    torch.save(ckpt, src)
    assert mmconv_main(['convert', str(src), str(dst), '--from', fmt]) == 0
    out = load_file(str(dst))['state_dict']
    assert out.keys() == expected['state_dict'].keys()
    for key, value in expected['state_dict'].items():
        assert torch.equal(out[key], value), key
    keep = tmp_path / 'keep.pth'
    assert mmconv_main(['convert', str(src), str(keep), '--from', fmt,
                        '--keep-classes']) == 0
    assert load_file(str(keep))['state_dict'][
        'bbox_head.cls_branches.0.weight'].shape[0] == 91


@pytest.mark.parametrize('extra', [['--to', 'detectron2'],
                                   ['--prefix', 'backbone.'],
                                   ['--style', 'caffe']])
def test_mmconv_convert_refuses_backbone_options(tmp_path, extra, capsys):
    """Options that only make sense for a backbone are usage errors (exit 2)
    for a DETR, and nothing is written."""
    from mmconv.cli import main as mmconv_main
    src = tmp_path / 'detr.pth'
    dst = tmp_path / ('out.pkl' if 'detectron2' in extra else 'out.pth')
    torch.save(synthesize_checkpoint(load_manifest('detr_r50')), src)
    assert mmconv_main(['convert', str(src), str(dst)] + extra) == 2
    assert not dst.exists()
    assert 'DETR' in capsys.readouterr().err


def test_mmconv_convert_unknown_names_both_families(tmp_path, capsys):
    """A file neither the backbone formats nor the DETR family recognise:
    exit 5, one line naming the file and both lists."""
    from mmconv.cli import main as mmconv_main
    src = tmp_path / 'junk.pth'
    torch.save({'head.weight': torch.zeros(2, 2)}, src)
    assert mmconv_main(['convert', str(src), str(tmp_path / 'o.pth')]) == 5
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(src) in err and 'moco' in err and 'deformable_detr' in err
    assert not (tmp_path / 'o.pth').exists()


def test_wrong_from_names_the_file_and_the_right_format(tmp_path, capsys):
    """A DETR file given as another DETR format, and a ResNet given as a
    DETR: exit 5, one line naming the file and the --from that fits."""
    src = tmp_path / 'detr.pth'
    torch.save(synthesize_checkpoint(load_manifest('detr_r50')), src)
    assert main([str(src), str(tmp_path / 'o.pth'),
                 '--from', 'conditional_detr']) == 5
    err = capsys.readouterr().err
    assert str(src) in err and '--from detr' in err
    import torchvision
    r18 = tmp_path / 'r18.pth'
    torch.save(torchvision.models.resnet18().state_dict(), r18)
    assert main([str(r18), str(tmp_path / 'o.pth'), '--from', 'detr']) == 5
    err = capsys.readouterr().err
    assert str(r18) in err and '--from torchvision' in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / 'o.pth').exists()


def _official(name):
    with open(os.path.join(OUTPUTS, f'{name}.json')) as f:
        return json.load(f)


def _mmdet_outputs(model, image):
    """Last decoder layer's class logits and sigmoid boxes for one image."""
    from mmdet.structures import DetDataSample
    h, w = image.shape[-2:]
    sample = DetDataSample(metainfo=dict(img_shape=(h, w), pad_shape=(h, w),
                                         batch_input_shape=(h, w)))
    with torch.no_grad():
        cls, boxes = model._forward(image, [sample])[:2]
    return cls[-1][0], boxes[-1][0]


@pytest.mark.parametrize('name', ['detr_r50', 'conditional_detr_r50',
                                  'deformable_detr_r50',
                                  'deformable_detr_refine_twostage_r50'])
def test_outputs_match_the_official_model(name, converted):
    """Converted MMDetection model == official model (outputs recorded with
    the official code on the same seeded weights and input): class logits
    (in MMDetection's class order) and boxes."""
    rec = _official(name)
    _, out = converted(name)
    model = build_detector(CASES[name][1])
    model.load_state_dict(out['state_dict'], strict=True)
    image = torch.randn(*rec['input']['shape'], generator=torch.Generator()
                        .manual_seed(rec['input']['generator_seed']))
    logits, boxes = _mmdet_outputs(model, image)
    ref_logits = torch.tensor(rec['pred_logits'])
    ref_boxes = torch.tensor(rec['pred_boxes'])
    n = len(ref_logits)
    columns = list(COCO_CATEGORY_IDS) + ([91] if name == 'detr_r50' else [])
    torch.testing.assert_close(logits[:n], ref_logits[:, columns],
                               rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(boxes[:n], ref_boxes, rtol=1e-3, atol=1e-4)
    if name == 'detr_r50':
        # DETRHead's softmax runs over the 81 kept columns, DETR's over all
        # 92: MMDetection's scores are the official ones renormalised
        # without the 11 never-used id columns (0, 12, 26, ...), as the
        # report notes; they are equal when those columns carry no mass.
        ref_p = ref_logits.softmax(-1)
        kept = ref_p[:, columns]
        torch.testing.assert_close(logits.softmax(-1),
                                   kept / kept.sum(-1, keepdim=True),
                                   rtol=1e-3, atol=1e-6)


def _two_stage_with_decoder_layers(layers):
    """The two-stage Deformable DETR checkpoint cut to ``layers`` (< 6)
    decoder layers: branches 0..layers-1, the proposal one last."""
    ckpt = synthesize_checkpoint(
        load_manifest('deformable_detr_refine_twostage_r50'))
    model = {}
    for key, value in ckpt['model'].items():
        m = re.match(r'^(transformer\.decoder\.layers\.|(?:transformer\.'
                     r'decoder\.)?(?:class|bbox)_embed\.)(\d+)\.(.*)$', key)
        if m is None:
            model[key] = value
            continue
        index = int(m.group(2))
        if index < layers:
            model[key] = value
        elif index == 6 and 'layers.' not in m.group(1):  # the proposal one
            model[f'{m.group(1)}{layers}.{m.group(3)}'] = value
    ckpt['model'] = model
    return ckpt


def test_two_stage_proposal_classifier_keeps_its_rows():
    """Two-stage Deformable DETR: branch 6 (the proposal classifier, row 0
    = objectness) keeps rows 0..79 by position, the decoder branches go
    to the 80 classes; in a file that is not two-stage a branch 6 is a
    decoder layer's and is remapped; a two-stage file with another
    decoder depth is refused unless the rows are kept."""
    ids = torch.tensor(COCO_CATEGORY_IDS)
    ckpt = synthesize_checkpoint(
        load_manifest('deformable_detr_refine_twostage_r50'))
    model = ckpt['model']
    conv = convert_checkpoint(ckpt)
    sd = conv.state_dict
    for p in ('weight', 'bias'):
        assert torch.equal(sd[f'bbox_head.cls_branches.6.{p}'],
                           model[f'class_embed.6.{p}'][:80])
        for i in range(6):
            assert torch.equal(sd[f'bbox_head.cls_branches.{i}.{p}'],
                               model[f'class_embed.{i}.{p}'][ids])
    assert sum('keep_objectness_rows' in c.what for c in conv.changed) == 2
    # a refine (not two-stage) file with a 7th decoder layer
    ckpt = synthesize_checkpoint(load_manifest('deformable_detr_refine_r50'))
    model = ckpt['model']
    for key in list(model):
        m = re.match(r'^(transformer\.decoder\.layers\.|class_embed\.|'
                     r'bbox_embed\.)5\.(.*)$', key)
        if m:
            model[f'{m.group(1)}6.{m.group(2)}'] = model[key].clone()
    for key in [k for k in model if k.startswith('bbox_embed.6.')]:
        model['transformer.decoder.' + key] = model[key]
    sd = convert_checkpoint(ckpt).state_dict
    assert torch.equal(sd['bbox_head.cls_branches.6.weight'],
                       model['class_embed.6.weight'][ids])
    # two-stage with 5 decoder layers: the proposal classifier is branch 5
    ckpt = _two_stage_with_decoder_layers(5)
    with pytest.raises(ConversionError, match='5 decoder layers'):
        convert_checkpoint(ckpt)
    kept = convert_checkpoint(ckpt, keep_classes=True).state_dict
    assert torch.equal(kept['bbox_head.cls_branches.5.weight'],
                       ckpt['model']['class_embed.5.weight'])


@pytest.mark.parametrize('name', sweep(sorted(CASES), (
    'dab_detr_r50', 'deformable_detr_refine_r50', 'detr_r101',
    'dino_5scale_r50', 'dn_deformable_detr_r50')))
def test_the_config_each_format_implies(name):
    """The config the report names (from the format's facts) is the one
    each case is built from; other backbones and variants are named."""
    ckpt = synthesize_checkpoint(load_manifest(name))
    conv = convert_checkpoint(ckpt)
    config = CASES[name][1]
    assert conv.meta['mmdet_config'].rsplit('/', 1)[-1] == \
        config.rsplit('/', 1)[-1]
    facts = FORMATS[CASES[name][0]].facts
    r101 = synthesize_checkpoint(load_manifest('detr_r101'))['model']
    other = detr_variant(facts, [
        k for k in r101 if k.startswith('backbone.0.body.')] + [
        k for k in ckpt['model'] if not k.startswith('backbone.0.body.')])
    assert other['depth'] == 101
    assert (other['config'] == 'mmdet::detr/detr_r101_8xb2-500e_coco.py'
            if CASES[name][0] == 'detr' else
            other['config'].endswith(' (with backbone depth=101)'))


def test_non_coco_classifier_exit_code(tmp_path, capsys):
    """A classifier with other rows than the COCO ids: exit 5, one line
    naming --keep-classes; with --keep-classes the rows are kept."""
    ckpt = synthesize_checkpoint(load_manifest('detr_r50'))
    for p in ('weight', 'bias'):
        ckpt['model'][f'class_embed.{p}'] = \
            ckpt['model'][f'class_embed.{p}'][:21].clone()
    src, dst = tmp_path / 'src.pth', tmp_path / 'dst.pth'
    torch.save(ckpt, src)
    assert main([str(src), str(dst)]) == 5
    err = capsys.readouterr().err.strip()
    assert err.endswith('classifier has 21 rows, not the 92 of an official '
                        'COCO model (ids 0..90 + no-object); use '
                        '--keep-classes for models trained on other '
                        'datasets')
    assert len(err.splitlines()) == 1 and not dst.exists()
    assert main([str(src), str(dst), '--keep-classes']) == 0
    assert load_file(str(dst))['state_dict'][
        'bbox_head.fc_cls.weight'].shape[0] == 21


def test_detr_formats_are_one_family_of_the_registry():
    """The DETR formats are declarations of the one registry, family
    'detr', strict (no tensor outside the table is silently dropped)."""
    names = format_names('detr')
    official = tuple(n for n in names if not n.startswith('detrex_'))
    assert official == ('dn_deformable_detr', 'deformable_detr',
                        'conditional_detr', 'detr', 'dino_5scale',
                        'dino_4scale', 'dab_deformable_detr', 'dab_detr')
    # the detrex layouts of four of them (mmconv/formats/detrex.py)
    assert set(names) - set(official) == {
        'detrex_dn_deformable_detr', 'detrex_deformable_detr',
        'detrex_conditional_detr', 'detrex_detr'}
    assert all(FORMATS[n].strict for n in names)
    assert {c[0] for c in CASES.values()} == set(official)


def test_mmengine_load_checkpoint_strict(tmp_path):
    """The converted file loads through MMEngine's load_checkpoint (what
    load_from uses) with strict=True: frozen-BN counters are filled by
    PyTorch, nothing is missing or unexpected."""
    from mmengine.runner import load_checkpoint
    name = 'deformable_detr_refine_r50'
    src, dst = tmp_path / 'src.pth', tmp_path / 'dst.pth'
    torch.save(synthesize_checkpoint(load_manifest(name)), src)
    assert main([str(src), str(dst), '--from', 'deformable_detr']) == 0
    model = build_detector(CASES[name][1])
    load_checkpoint(model, str(dst), map_location='cpu', strict=True)
    out, loaded = load_file(str(dst)), model.state_dict()
    for key, value in out['state_dict'].items():
        assert torch.equal(loaded[key], value), key


# --- verification against the whole MMDetection detector ---------------------
#: Every DETR-family format with a source builder (both families).
_DETECTOR_FORMATS = [n for n in format_names('detr') + format_names('detr_hf')
                     if n in SOURCES]


@pytest.mark.parametrize('fmt', sweep(_DETECTOR_FORMATS, (
    'dino_4scale', 'dab_detr', 'deformable_detr', 'detrex_dn_deformable_detr',
    'hf_deformable_detr_twostage', 'hf_conditional_detr')))
def test_each_result_is_its_whole_detector(fmt):
    """Each format's result has exactly the names and shapes of the
    MMDetection detector of the config it records, built on the meta
    device: nothing missing (DN/DAB: query parts declared initialised),
    unexpected or mis-shaped, and no warning."""
    pytest.importorskip('mmdet.registry')
    conv = convert_checkpoint(SOURCES[fmt]().checkpoint, fmt)
    check = conv.report.backbone
    assert check.complete, check.describe()
    assert check.what.endswith(f'detector of {conv.meta["mmdet_config"]}')
    assert not check.unchecked and 'warning:' not in conv.summary()
    assert f'module:   complete {check.what}' in conv.summary()
    assert check.args['options']['bbox_head.num_classes'] == 80
    initialised = {r'^query_embedding\.weight$', r'^reference_points_fc\.'}
    assert set(conv.format.facts.get('initialised', ())) == (
        initialised if 'dab_deformable' in fmt or 'dn_deformable' in fmt
        else set())


@pytest.mark.parametrize('name', sweep(sorted(CASES), (
    'detr_r50', 'deformable_detr_refine_twostage_r50', 'dino_4scale_r50')))
def test_meta_detector_is_the_config_model(name):
    """The meta-device detector the verification builds (MMDetection's
    config + declared options, FAMILY_CONFIG_MODELS) has the names and
    shapes of the real model of the config each case is built from
    (mmconv's configs/detr_family files included), and is cached."""
    pytest.importorskip('mmdet.registry')
    conv = convert_checkpoint(synthesize_checkpoint(load_manifest(name)))
    model = detector_config(conv, *official_config(conv))
    shapes = module_shapes(DETR_DETECTOR, model)
    real = build_detector(CASES[name][1]).state_dict()
    assert shapes == {k: tuple(v.shape) for k, v in real.items()}
    assert module_shapes(DETR_DETECTOR, model) is shapes
    path = conv.meta['mmdet_config']
    assert path in FAMILY_CONFIG_MODELS or path.startswith('mmdet::')


def _convert_file(tmp_path, ckpt, *args):
    """CLI exit code and the report of ``ckpt`` converted."""
    n = len(list(tmp_path.iterdir()))
    src, dst = tmp_path / f'src{n}.pth', tmp_path / f'dst{n}.pth'
    torch.save(ckpt, src)
    code = main([str(src), str(dst), *args])
    return code, convert_checkpoint(ckpt, keep_classes='--keep-classes'
                                    in args)


def test_a_wrong_result_is_reported_naming_the_key(tmp_path, capsys):
    """A result its detector cannot load is reported (module: line, a
    warning; converted, exit 0) naming the key: a decoder layer tensor
    missing, a class head of another shape, another number of feature
    levels, and the DINO label embedding --keep-classes keeps (92 rows,
    91 classes)."""
    pytest.importorskip('mmdet.registry')
    ckpt = synthesize_checkpoint(load_manifest('dino_4scale_r50'))
    del ckpt['model']['transformer.decoder.layers.3.linear2.weight']
    code, conv = _convert_file(tmp_path, ckpt)
    check = conv.report.backbone
    assert code == 0 and check.missing == [
        'decoder.layers.3.ffn.layers.1.weight']
    assert check.unexpected == check.mismatched == []
    assert (f'warning:  INCOMPLETE DINO detector of '
            f'{conv.meta["mmdet_config"]}: 1 missing (first: '
            'decoder.layers.3.ffn.layers.1.weight)') in conv.summary()

    ckpt = synthesize_checkpoint(load_manifest('dino_4scale_r50'))
    ckpt['model']['transformer.level_embed'] = torch.zeros(5, 256)
    code, conv = _convert_file(tmp_path, ckpt)
    assert code == 0 and conv.report.backbone.mismatched == [
        'level_embed [5, 256] (expected [4, 256])']

    ckpt = synthesize_checkpoint(load_manifest('deformable_detr_refine_r50'))
    narrow = ckpt['model']['class_embed.2.weight'][:, :128].clone()
    for key in ('class_embed.2.weight',
                'transformer.decoder.class_embed.2.weight'):
        if key in ckpt['model']:  # the same module under both names
            ckpt['model'][key] = narrow
    code, conv = _convert_file(tmp_path, ckpt)
    assert code == 0 and conv.report.backbone.mismatched == [
        'bbox_head.cls_branches.2.weight [80, 128] (expected [80, 256])']

    ckpt = synthesize_checkpoint(load_manifest('dino_4scale_r50'))
    code, conv = _convert_file(tmp_path, ckpt, '--keep-classes')
    check = conv.report.backbone
    assert code == 0 and check.args['options']['bbox_head.num_classes'] == 91
    assert check.mismatched == ['dn_query_generator.label_embedding.weight '
                                '[92, 256] (expected [91, 256])']
    assert 'with bbox_head.num_classes=91' in check.what


def test_a_5scale_result_is_not_a_4scale_detector():
    """The 5-scale DINO result against the 4-scale detector: the fifth
    level's keys are unexpected, every level-sized tensor mis-shaped."""
    pytest.importorskip('mmdet.registry')
    conv = convert_checkpoint(synthesize_checkpoint(
        load_manifest('dino_5scale_r50')))
    four = convert_checkpoint(synthesize_checkpoint(
        load_manifest('dino_4scale_r50')))
    check = check_module(DETR_DETECTOR, conv.state_dict, conv.family, four)
    assert 'neck.convs.3.conv.weight' in check.unexpected
    assert 'level_embed [5, 256] (expected [4, 256])' in check.mismatched
    assert any(k.startswith('encoder.layers.0.self_attn.sampling_offsets.')
               for k in check.mismatched)


def test_options_the_weights_imply():
    """Layers, classes (--keep-classes: the classifier rows; DETR's softmax
    head has one more) and box refinement are read from the result, and
    named where the recorded config does not say them."""
    pytest.importorskip('mmdet.registry')
    ckpt = synthesize_checkpoint(load_manifest('detr_r50'))
    for p in ('weight', 'bias'):
        ckpt['model'][f'class_embed.{p}'] = \
            ckpt['model'][f'class_embed.{p}'][:21].clone()
    for key in [k for k in ckpt['model']
                if k.startswith('transformer.decoder.layers.5.')]:
        del ckpt['model'][key]
    check = convert_checkpoint(ckpt, keep_classes=True).report.backbone
    assert check.complete, check.describe()
    options = check.args['options']
    assert options['bbox_head.num_classes'] == 20  # 21 rows: + no-object
    assert options['decoder.num_layers'] == 5
    assert check.what.endswith(' with decoder.num_layers=5, '
                               'bbox_head.num_classes=20')
    # two-stage Deformable DETR with 5 decoder layers, rows kept
    ckpt = _two_stage_with_decoder_layers(5)
    check = convert_checkpoint(ckpt, keep_classes=True).report.backbone
    assert check.complete, check.describe()
    assert check.args['options']['as_two_stage'] is True


def test_without_mmdetection_results_convert_unverified(monkeypatch):
    """No MMDetection: the same tensors, the detector marked not
    verified."""
    import mmconv.verify as verify
    ckpt = synthesize_checkpoint(load_manifest('deformable_detr_r50'))
    expected = convert_checkpoint(ckpt).state_dict
    monkeypatch.setattr(verify, '_SHAPES', {})
    # import mmdet.registry fails (without MMDetection: 'mmdet is not ...')
    monkeypatch.setitem(sys.modules, 'mmdet.registry', None)
    conv = convert_checkpoint(ckpt)
    check = conv.report.backbone
    assert check.unchecked == 'mmdet.registry is not installed'
    assert check.what.startswith('DeformableDETR detector of ')
    assert check.describe().endswith(
        '(not verified: mmdet.registry is not installed)')
    assert 'warning:' not in conv.summary()
    assert conv.state_dict.keys() == expected.keys()
    assert all(torch.equal(v, expected[k])
               for k, v in conv.state_dict.items())
