# Copyright (c) mmconv contributors. All rights reserved.
"""DETR-family checkpoints in Hugging Face transformers' layout -> MMDetection
3.x detectors (the ``detr_hf`` family of :mod:`mmconv.formats.detr`).

Sources: full-size layouts recorded from transformers 5.25 and 4.57
(``tests/fixtures/hf_detr_layouts.py``) filled with seeded values, and, for
the numerical checks, small models of transformers 5.25 itself (random
weights, ``use_pretrained_backbone=False``, no download), saved with
``save_pretrained`` and read back with ``from_pretrained`` as the reference.
Targets: MMDetection's own configs (mmconv's ``configs/detr_family`` where
the Deformable DETR neck needs ``bias=True``).
"""
import json
import os
import re
import shutil

import pytest
import torch

from mmconv import load_file
from mmconv.cli import main
from mmconv.errors import ConversionError
from mmconv.fetching import load_source
from mmconv.formats.detr import COCO_CATEGORY_IDS, RT_DETR_REASON
from mmconv.pipeline import convert_checkpoint, convert_state_dict
from tests.fixtures.hf_detr_layouts import LAYOUTS, RESNET50_TIMM
from tests.helpers.tiers import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
FAMILY = os.path.join(ROOT, 'configs', 'detr_family')
CONFIGS = {
    'detr': 'mmdet::detr/detr_r50_8xb2-150e_coco.py',
    'deformable_detr': os.path.join(
        FAMILY, 'deformable-detr_r50_official_coco.py'),
    'deformable_detr_refine': os.path.join(
        FAMILY, 'deformable-detr-refine_r50_official_coco.py'),
    'deformable_detr_refine_twostage': os.path.join(
        FAMILY, 'deformable-detr-refine-twostage_r50_official_coco.py'),
    'conditional_detr':
    'mmdet::conditional_detr/conditional-detr_r50_8xb2-50e_coco.py',
    'dab_detr': 'mmdet::dab_detr/dab-detr_r50_8xb2-50e_coco.py',
}
#: recorded layout -> the format it must be detected as
FORMAT = {
    'detr': 'hf_detr',
    'deformable_detr': 'hf_deformable_detr',
    'deformable_detr_refine@5': 'hf_deformable_detr_refine',
    'deformable_detr_refine@4': 'hf_deformable_detr_refine_v4',
    'deformable_detr_refine_twostage@5': 'hf_deformable_detr_twostage',
    'deformable_detr_refine_twostage@4': 'hf_deformable_detr_twostage',
    'conditional_detr': 'hf_conditional_detr',
    'dab_detr@5': 'hf_dab_detr',
    'dab_detr@4': 'hf_dab_detr',
}
IDS = list(COCO_CATEGORY_IDS)


def _variant(layout: str) -> str:
    return layout.split('@')[0]


def _value(key: str, shape, gen: torch.Generator) -> torch.Tensor:
    """A seeded, forward-safe value (positive variances, unit-ish norms)."""
    leaf = key.rsplit('.', 1)[-1]
    if leaf == 'running_var':
        return torch.rand(shape, generator=gen) + 0.5
    if len(shape) == 1 and leaf == 'weight':
        return 1 + torch.randn(shape, generator=gen) * 0.1
    fan_in = max(1, int(torch.tensor(shape[1:]).prod())) \
        if len(shape) > 1 else 1
    return torch.randn(shape, generator=gen) / fan_in**0.5


def synthesize(layout: str, seed: int = 0):
    """Every key of a recorded layout, in the file's order (backbone
    first), with distinct seeded values; aliases are the same tensor."""
    rec = LAYOUTS[layout]
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in RESNET50_TIMM.items():
        sd[rec['backbone_prefix'] + key] = _value(key, shape, gen)
    for key, shape in rec['keys'].items():
        sd[key] = sd[rec['aliases'][key]] if key in rec['aliases'] \
            else _value(key, shape, gen)
    return sd


def save_as_written(sd, layout: str, folder) -> str:
    """The file the layout's writer writes (``model.safetensors`` or, 4.x
    with tied heads, ``pytorch_model.bin``), alone in ``folder``."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(str(folder), LAYOUTS[layout]['file'])
    if path.endswith('.safetensors'):
        from safetensors.torch import save_file
        save_file(sd, path, metadata={'format': 'pt'})
    else:
        torch.save(sd, path)
    return path


_MODELS = {}


def mmdet_model(config: str, **small):
    """The MMDetection detector of ``config`` (``small``: encoder/decoder
    layers and queries), eval mode, built once per session."""
    key = (config, tuple(sorted(small.items())))
    if key not in _MODELS:
        from mmengine.config import Config
        from mmengine.hub import get_config
        from mmengine.registry import init_default_scope
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
        register_all_modules()
        init_default_scope('mmdet')
        cfg = (get_config(config) if config.startswith('mmdet::') else
               Config.fromfile(config))
        if small:
            cfg.model.encoder.num_layers = small['encoder_layers']
            cfg.model.decoder.num_layers = small['decoder_layers']
            cfg.model.num_queries = small['num_queries']
        torch.manual_seed(0)
        _MODELS[key] = MODELS.build(cfg.model).eval()
    return _MODELS[key]


def expected_outputs(sd, conv):
    """What every output tensor must be, from the source tensors and the
    report alone: packed ``in_proj`` = q, k, v rows (told apart by their
    source names), classifier rows by COCO id (DETR: no-object last), the
    two-stage proposal classifier's rows 0..79, everything else the source
    tensor itself."""
    rep = conv.report
    sources = {}
    for r in rep.kept + rep.aliases + rep.copies:
        sources.setdefault(r.new, set()).add(r.old)
    expected = {}
    fmt = conv.format.name
    for new, olds in sources.items():
        if new.endswith(('in_proj_weight', 'in_proj_bias')):
            part = {re.search(r'\.([qkv])_proj\.', o).group(1): o
                    for o in olds}
            assert sorted(part) == ['k', 'q', 'v'], olds
            expected[new] = torch.cat([sd[part[p]] for p in 'qkv'])
            continue
        values = {o: sd[o] for o in olds}
        first = next(iter(values.values()))
        assert all(torch.equal(v, first) for v in values.values()), olds
        if 'fc_cls' in new or 'cls_branches' in new:
            if fmt == 'hf_deformable_detr_twostage' and \
                    new.startswith('bbox_head.cls_branches.6.'):
                rows = list(range(80))  # objectness row 0 stays first
            else:
                rows = IDS + ([91] if fmt == 'hf_detr' else [])
            first = first[rows]
        expected[new] = first
    return expected


def convert_lone_file(sd, layout: str, folder):
    """``mmconv convert`` of the lone weight file the layout's writer
    writes; returns the output (both files are removed: a full-size
    detector is ~170 MB)."""
    src = save_as_written(sd, layout, folder)
    dst = os.path.join(str(folder), 'mmdet.pth')
    try:
        assert main(['convert', src, dst]) == 0
        return load_file(dst)
    finally:
        for path in (src, dst):
            if os.path.exists(path):
                os.remove(path)


def test_recorded_layouts_are_consistent():
    """Each variant is recorded for both writers; aliases (4.x
    ``pytorch_model.bin`` only) point at earlier keys of the same shape;
    every layout has the same timm ResNet-50."""
    writers = {}
    for name, rec in LAYOUTS.items():
        for w in rec['writers']:
            writers.setdefault(_variant(name), set()).add(w)
        keys = list(rec['keys'])
        for alias, target in rec['aliases'].items():
            assert keys.index(target) < keys.index(alias)
            assert rec['keys'][alias] == rec['keys'][target]
        assert bool(rec['aliases']) == (rec['file'] == 'pytorch_model.bin')
        assert rec['num_labels'] == 91
        assert not any('num_batches_tracked' in k for k in rec['keys'])
    assert writers == {v: {'4.57.6', '5.25.0'} for v in CONFIGS}
    assert len(RESNET50_TIMM) == 265
    assert not any(k.endswith('num_batches_tracked') for k in RESNET50_TIMM)


@pytest.mark.parametrize('layout', sweep(sorted(LAYOUTS), (
    'detr', 'dab_detr@4', 'deformable_detr_refine_twostage@5')))
def test_detected_converted_and_loaded_strictly(layout, tmp_path):
    """Each recorded layout, as its lone weight file: auto-detected,
    converted by ``mmconv convert``, loaded into the MMDetection model of
    its config with strict=True (zero missing, zero unexpected); every
    source tensor is kept, aliased or copied (none dropped), and every
    output tensor is what the source says, by value."""
    sd = synthesize(layout)
    out = convert_lone_file(sd, layout, tmp_path)
    result = out['state_dict']
    assert out['meta']['source_format'] == FORMAT[layout]
    model = mmdet_model(CONFIGS[_variant(layout)])
    loaded = model.load_state_dict(result, strict=False)
    assert loaded.missing_keys == [] and loaded.unexpected_keys == []
    model.load_state_dict(result, strict=True)
    conv = convert_state_dict(sd)
    rep = conv.report
    assert conv.format.name == FORMAT[layout]
    assert rep.dropped == []
    assert len(rep.kept) + len(rep.aliases) == len(sd)
    assert {r.old for r in rep.kept + rep.aliases} == set(sd)
    assert {r.old for r in rep.aliases} == set(LAYOUTS[layout]['aliases'])
    expected = expected_outputs(sd, conv)
    weights = model.state_dict()
    assert set(expected) == set(result) == set(weights) - {
        k for k in weights if k.endswith('num_batches_tracked')}
    for key, value in expected.items():
        assert torch.equal(result[key], value), key
        assert torch.equal(weights[key], value), key
    assert out['meta']['mmdet_config'] == CONFIGS[_variant(layout)].replace(
        ROOT + os.sep, '')


def test_qkv_are_packed_in_q_k_v_order():
    """q_proj, k_proj, v_proj of each attention become the packed in_proj
    rows 0:256, 256:512, 512:768 in that order (a swap would load
    silently: shapes are equal); a missing part is refused."""
    sd = synthesize('detr')
    for p, value in zip('qkv', (1., 2., 3.)):
        for leaf in ('weight', 'bias'):
            for key in (f'model.encoder.layers.0.self_attn.{p}_proj.{leaf}',
                        f'model.decoder.layers.3.encoder_attn.{p}_proj.'
                        f'{leaf}'):
                sd[key] = torch.full_like(sd[key], value)
    out = convert_state_dict(sd).state_dict
    for key in ('encoder.layers.0.self_attn.attn.in_proj_weight',
                'decoder.layers.3.cross_attn.attn.in_proj_bias'):
        rows = out[key].reshape(3, 256, -1)
        assert [rows[i].unique().tolist() for i in range(3)] == [[1.], [2.],
                                                                 [3.]]
    ddetr = synthesize('deformable_detr')
    out = convert_state_dict(ddetr).state_dict
    for i, p in enumerate('qkv'):
        assert torch.equal(
            out['decoder.layers.5.self_attn.attn.in_proj_weight'][
                256 * i:256 * (i + 1)],
            ddetr[f'model.decoder.layers.5.self_attn.{p}_proj.weight'])
    del sd['model.encoder.layers.2.self_attn.k_proj.weight']
    with pytest.raises(ConversionError, match='not k') as err:
        convert_state_dict(sd)
    assert '\n' not in str(err.value)


def test_heads_saved_once_fill_every_branch():
    """Deformable DETR without box refinement saves one classifier and one
    box MLP (class_embed.0, bbox_embed.0; the others are tied): every
    MMDetection branch gets them; with box refinement transformers 5 saves
    one classifier (every branch) and six box MLPs (one each); the report
    lists the extra branches as copies, not as source tensors."""
    sd = synthesize('deformable_detr')
    conv = convert_state_dict(sd)
    out = conv.state_dict
    for i in range(6):
        assert torch.equal(out[f'bbox_head.cls_branches.{i}.weight'],
                           sd['class_embed.0.weight'][IDS])
        for j in range(3):
            assert torch.equal(
                out[f'bbox_head.reg_branches.{i}.{2 * j}.weight'],
                sd[f'bbox_embed.0.layers.{j}.weight'])
    assert len(conv.report.copies) == 5 * (2 + 6)
    assert {r.old for r in conv.report.copies} == {
        k for k in sd if k.startswith(('class_embed.0.', 'bbox_embed.0.'))}
    sd = synthesize('deformable_detr_refine@5')
    out = convert_state_dict(sd).state_dict
    for i in range(6):
        assert torch.equal(out[f'bbox_head.cls_branches.{i}.bias'],
                           sd['class_embed.0.bias'][IDS])
        assert torch.equal(
            out[f'bbox_head.reg_branches.{i}.4.weight'],
            sd[f'model.decoder.bbox_embed.{i}.layers.2.weight'])
    # 4.x: six classifiers, each its own branch
    sd = synthesize('deformable_detr_refine@4')
    out = convert_state_dict(sd).state_dict
    assert not torch.equal(out['bbox_head.cls_branches.1.weight'],
                           out['bbox_head.cls_branches.0.weight'])
    assert torch.equal(out['bbox_head.cls_branches.5.weight'],
                       sd['class_embed.5.weight'][IDS])


@pytest.mark.parametrize('layout', ['deformable_detr',
                                    'deformable_detr_refine@5'])
def test_a_head_saved_once_needs_six_decoder_layers(layout):
    """A head saved once is written into the six MMDetection branches: a
    file with another decoder depth is refused, one line."""
    sd = {k: v for k, v in synthesize(layout).items()
          if not re.match(r'^model\.decoder\.(layers|bbox_embed)\.5\.', k)}
    with pytest.raises(ConversionError, match='5 decoder layers') as err:
        convert_state_dict(sd)
    assert '\n' not in str(err.value)


def test_two_stage_proposal_classifier_keeps_rows_by_position():
    """Two-stage: branch 6 (the proposal classifier; row 0 = objectness)
    keeps rows 0..79 by position, branches 0..5 go to the 80 classes; the
    4.x file's second names are aliases; --keep-classes keeps all 91
    rows, and only with it is another decoder depth converted."""
    for layout in ('deformable_detr_refine_twostage@5',
                   'deformable_detr_refine_twostage@4'):
        sd = synthesize(layout)
        conv = convert_state_dict(sd)
        out = conv.state_dict
        assert torch.equal(out['bbox_head.cls_branches.6.weight'],
                           sd['model.decoder.class_embed.6.weight'][:80])
        for i in range(6):
            assert torch.equal(out[f'bbox_head.cls_branches.{i}.weight'],
                               sd[f'model.decoder.class_embed.{i}.weight']
                               [IDS])
        assert sum('keep_objectness_rows' in c.what
                   for c in conv.changed) == 2
    kept = convert_state_dict(sd, keep_classes=True).state_dict
    assert kept['bbox_head.cls_branches.6.weight'].shape[0] == 91
    cut = {k: v for k, v in sd.items()
           if not re.match(r'^(model\.decoder\.)?(layers|class_embed|'
                           r'bbox_embed)\.5\.', k)}
    with pytest.raises(ConversionError, match='5 decoder layers'):
        convert_state_dict(cut)


def test_dab_detr_box_mlp_under_both_names():
    """DAB-DETR's one box MLP is ``bbox_predictor`` (5.x) or
    ``model.decoder.bbox_embed`` (4.x): both fill bbox_head.fc_reg, the one
    place MMDetection's DABDETR holds it (its decoder uses it from there)."""
    five, four = synthesize('dab_detr@5'), synthesize('dab_detr@4')
    assert set(five) ^ set(four) == {
        f'{p}.layers.{i}.{leaf}' for p in ('bbox_predictor',
                                           'model.decoder.bbox_embed')
        for i in range(3) for leaf in ('weight', 'bias')}
    for sd, name in ((five, 'bbox_predictor'),
                     (four, 'model.decoder.bbox_embed')):
        out = convert_state_dict(sd).state_dict
        for i in range(3):
            assert torch.equal(out[f'bbox_head.fc_reg.layers.{i}.weight'],
                               sd[f'{name}.layers.{i}.weight'])
        assert not any('bbox_embed' in k for k in out)


def test_keep_classes_and_non_coco_rows(tmp_path, capsys):
    """--keep-classes keeps the classifier rows; a classifier that is not
    the 91 COCO ids is refused (exit 5, one line naming --keep-classes)
    and nothing is written."""
    sd = synthesize('conditional_detr')
    conv = convert_state_dict(sd, keep_classes=True)
    assert torch.equal(conv.state_dict['bbox_head.fc_cls.weight'],
                       sd['class_labels_classifier.weight'])
    for leaf in ('weight', 'bias'):
        key = f'class_labels_classifier.{leaf}'
        sd[key] = sd[key][:21].clone()
    src = save_as_written(sd, 'conditional_detr', tmp_path)
    dst = tmp_path / 'out.pth'
    assert main(['convert', src, str(dst)]) == 5
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and '--keep-classes' in err
    assert not dst.exists()


def test_rt_detr_is_named_and_refused(tmp_path, capsys):
    """RT-DETR (transformers' own save_pretrained, v1 and v2) is recognised
    and refused with the reason, one line, exit 5, nothing written."""
    transformers = pytest.importorskip('transformers')
    for config, model in (('RTDetrConfig', 'RTDetrForObjectDetection'),
                          ('RTDetrV2Config', 'RTDetrV2ForObjectDetection')):
        cfg = getattr(transformers, config)(
            use_pretrained_backbone=False, encoder_layers=1,
            decoder_layers=2, num_queries=10)
        torch.manual_seed(0)
        getattr(transformers, model)(cfg).save_pretrained(tmp_path / model)
        lone = tmp_path / f'{model}.safetensors'
        os.link(tmp_path / model / 'model.safetensors', lone)
        dst = tmp_path / f'{model}.pth'
        capsys.readouterr()  # transformers' progress bars
        assert main(['convert', str(lone), str(dst)]) == 5
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert RT_DETR_REASON in err and not dst.exists()


# --- numerical equivalence with transformers ---------------------------------
SMALL = {
    'detr': ('Detr', dict(encoder_layers=1, decoder_layers=2,
                          num_queries=5)),
    'deformable_detr': ('DeformableDetr', dict(
        encoder_layers=1, decoder_layers=6, num_queries=7)),
    'deformable_detr_refine': ('DeformableDetr', dict(
        encoder_layers=1, decoder_layers=6, num_queries=7,
        with_box_refine=True)),
    'deformable_detr_refine_twostage': ('DeformableDetr', dict(
        encoder_layers=1, decoder_layers=6, num_queries=7,
        with_box_refine=True, two_stage=True, two_stage_num_proposals=7)),
    'conditional_detr': ('ConditionalDetr', dict(
        encoder_layers=1, decoder_layers=2, num_queries=5)),
    'dab_detr': ('DabDetr', dict(encoder_layers=1, decoder_layers=2,
                                 num_queries=5)),
}


def _transformers_model(variant: str, folder):
    """A small transformers model of ``variant`` (same structure, fewer
    layers and queries; every tensor perturbed from its initialisation so
    that none is zero), written with save_pretrained and read back: the
    reference is what transformers makes of the folder."""
    transformers = pytest.importorskip('transformers')
    name, small = SMALL[variant]
    config = getattr(transformers, f'{name}Config')(
        use_timm_backbone=True, use_pretrained_backbone=False,
        num_labels=91, **small)
    cls = getattr(transformers, f'{name}ForObjectDetection')
    torch.manual_seed(0)
    model = cls(config)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if key.endswith('running_var'):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=gen) * 0.02)
    model.save_pretrained(folder)
    return cls.from_pretrained(folder).eval(), small


def _mmdet_outputs(model, image):
    """Last decoder layer's class logits and sigmoid boxes for one image."""
    from mmdet.structures import DetDataSample
    h, w = image.shape[-2:]
    sample = DetDataSample(metainfo=dict(img_shape=(h, w), pad_shape=(h, w),
                                         batch_input_shape=(h, w)))
    with torch.no_grad():
        cls, boxes = model._forward(image, [sample])[:2]
    return cls[-1][0], boxes[-1][0]


def _check_outputs(variant, tmp_path, form='lone'):
    """Convert a small transformers model (``form``: its lone
    model.safetensors, or its save_pretrained folder), load it strictly
    into the MMDetection model of the same size, and compare the last
    layer's logits (class remap applied) and boxes on the same input.
    Returns the largest differences."""
    folder = tmp_path / 'hf'
    reference, small = _transformers_model(variant, folder)
    lone = tmp_path / 'lone' / 'model.safetensors'
    lone.parent.mkdir()
    os.link(folder / 'model.safetensors', lone)  # no config.json beside
    dst = tmp_path / 'mmdet.pth'
    src = folder if form == 'folder' else lone
    assert main(['convert', str(src), str(dst)]) == 0
    model = mmdet_model(CONFIGS[variant], **{
        k: small[k] for k in ('encoder_layers', 'decoder_layers',
                              'num_queries')})
    model.load_state_dict(load_file(str(dst))['state_dict'], strict=True)
    shutil.rmtree(folder)
    os.remove(lone)
    os.remove(dst)
    image = torch.randn(1, 3, 64, 96,
                        generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = reference(pixel_values=image,
                        pixel_mask=torch.ones(1, 64, 96, dtype=torch.long))
    logits, boxes = _mmdet_outputs(model, image)
    columns = IDS + ([91] if variant == 'detr' else [])
    ref_logits, ref_boxes = ref.logits[0][:, columns], ref.pred_boxes[0]
    assert logits.shape == ref_logits.shape and boxes.shape == ref_boxes.shape
    assert ref_logits.abs().max() > 0.1  # not a degenerate comparison
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(boxes, ref_boxes, rtol=0, atol=1e-4)
    return ((logits - ref_logits).abs().max().item(),
            (boxes - ref_boxes).abs().max().item())


@pytest.mark.parametrize('variant,form', [('detr', 'folder'),
                                          ('deformable_detr', 'lone')])
def test_outputs_equal_transformers(variant, form, tmp_path):
    """DETR (its save_pretrained folder) and Deformable DETR (its lone
    model.safetensors): MMDetection's logits (in its 80-class order,
    DETR's no-object last) and boxes equal transformers' within 1e-4."""
    _check_outputs(variant, tmp_path, form)


@pytest.mark.slow
@pytest.mark.parametrize('variant', ['deformable_detr_refine',
                                     'deformable_detr_refine_twostage',
                                     'conditional_detr', 'dab_detr'])
def test_outputs_equal_transformers_other_variants(variant, tmp_path):
    """Box refinement, two-stage, Conditional DETR and DAB-DETR: the same
    equality within 1e-4."""
    _check_outputs(variant, tmp_path)


def test_folder_config_confirms_the_weights(tmp_path, capsys):
    """A save_pretrained folder: config.json agrees with the weights (the
    variant is recorded); a config.json that names another variant, depth
    or model is refused, one line naming config.json, nothing written."""
    folder = tmp_path / 'hf'
    _transformers_model('deformable_detr', folder)
    conv = convert_checkpoint(load_source(str(folder)))
    assert conv.format.name == 'hf_deformable_detr'
    assert conv.meta['variant'] == dict(depth=50, with_box_refine=False,
                                        two_stage=False, decoder_layers=6)
    assert conv.meta['mmdet_config'].endswith(
        'deformable-detr_r50_official_coco.py (with num_queries=7)')
    original = json.loads((folder / 'config.json').read_text())
    for change, said in ((dict(two_stage=True), 'two_stage=True'),
                         (dict(decoder_layers=3), 'decoder_layers=3'),
                         (dict(model_type='detr'), "model_type='detr'")):
        (folder / 'config.json').write_text(json.dumps({**original,
                                                        **change}))
        dst = tmp_path / 'out.pth'
        capsys.readouterr()
        assert main(['convert', str(folder), str(dst)]) == 5
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert f'config.json says {said}' in err and not dst.exists()
