# Copyright (c) mmconv contributors. All rights reserved.
"""IDEA-Research DINO (4-/5-scale), DAB-DETR and DAB-Deformable-DETR ->
MMDetection 3.x ``DINO`` / ``DABDETR`` / ``DeformableDETR``.

Sources are synthesized from key manifests recorded from the official code
(``tests/fixtures/detr_manifests``); ``tests/fixtures/detr_outputs`` holds
the official models' outputs on the same seeded weights and input, recorded
once in float64 with the official code (see each file's description). The
strict-load, detection and bookkeeping checks every DETR-family manifest
gets are in ``tests/formats/test_detr.py`` (parametrised over ``CASES``) and in the
registry round trip of ``tests/test_registry.py``.
"""
import copy
import json
import os
from functools import partial

import pytest
import torch

from mmconv import load_file
from mmconv.cli import main as mmconv_main
from mmconv.cli import preset_main
from mmconv.detect import candidates
from mmconv.errors import ConversionError
from mmconv.formats.detr import COCO_CATEGORY_IDS, DINO_LABEL_EMBEDDING
from mmconv.ops import apply
from mmconv.pipeline import convert_checkpoint
from tests.fixtures.detr_checkpoints import (CASES, build_detector,
                                             load_manifest,
                                             synthesize_checkpoint)

#: tools/model_converters/detr_family2mmdet.py
detr_main = partial(preset_main, 'detr_family2mmdet')

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
OUTPUTS = os.path.join(ROOT, 'tests', 'fixtures', 'detr_outputs')
COCO_IDS = torch.tensor(COCO_CATEGORY_IDS)


def _recorded(name: str) -> dict:
    """The official outputs recorded for manifest ``name``."""
    with open(os.path.join(OUTPUTS, f'{name}.json')) as f:
        return json.load(f)


def _official_checkpoint(name: str, rec: dict) -> dict:
    """The checkpoint the official outputs were recorded with: seeded
    weights plus the recorded overrides."""
    ckpt = synthesize_checkpoint(load_manifest(name), seed=rec['weights_seed'])
    for key, override in rec['overrides'].items():
        ckpt['model'][key][override['rows']] = override['value']
    return ckpt


def _float64_detector(config: str, state_dict: dict) -> torch.nn.Module:
    """A float64 copy of the config's model (the cached float32 model other
    tests share stays untouched) with ``state_dict`` loaded strictly."""
    model = copy.deepcopy(build_detector(config))
    model.load_state_dict(state_dict, strict=True)
    return model.double().eval()


def _last_layer_outputs(model: torch.nn.Module, image: torch.Tensor):
    """Last decoder layer's class logits and sigmoid boxes for one image.

    As when the official outputs were recorded, tensors both codes create
    without a dtype (DAB-DETR's zero content queries) follow the image's
    dtype, and the sine position encoding both compute in float32 is cast
    to it (DAB-DETR feeds it to linear layers directly).
    """
    from mmdet.structures import DetDataSample
    h, w = image.shape[-2:]
    sample = DetDataSample(metainfo=dict(img_shape=(h, w), pad_shape=(h, w),
                                         batch_input_shape=(h, w)))
    default = torch.get_default_dtype()
    torch.set_default_dtype(image.dtype)
    cast = model.positional_encoding.register_forward_hook(
        lambda module, inputs, output: output.to(image.dtype))
    try:
        with torch.no_grad():
            cls, boxes = model._forward(image, [sample])[:2]
    finally:
        cast.remove()
        torch.set_default_dtype(default)
    return cls[-1][0], boxes[-1][0]


@pytest.mark.parametrize('name', ['dino_4scale_r50', 'dino_5scale_r50',
                                  'dab_detr_r50'])
def test_outputs_match_the_official_model(name):
    """Converted MMDetection model == official model on the same weights
    and input: class scores on the 80 classes (official columns of their
    COCO ids), logits and boxes of the first recorded queries, within 1e-4
    (float64 on both sides: the measured difference is ~1e-7)."""
    rec = _recorded(name)
    assert rec['dtype'] == 'float64' and rec['manifest'] == name
    conv = convert_checkpoint(_official_checkpoint(name, rec))
    assert conv.format.name == CASES[name][0]
    model = _float64_detector(CASES[name][1], conv.state_dict)
    image = torch.randn(*rec['input']['shape'], generator=torch.Generator()
                        .manual_seed(rec['input']['generator_seed']))
    logits, boxes = _last_layer_outputs(model, image.double())
    ref_logits = torch.tensor(rec['pred_logits'],
                              dtype=torch.float64)[:, COCO_IDS]
    ref_boxes = torch.tensor(rec['pred_boxes'], dtype=torch.float64)
    n = len(ref_logits)
    assert logits.shape[-1] == 80 and n >= 40
    torch.testing.assert_close(logits[:n].sigmoid(), ref_logits.sigmoid(),
                               rtol=0, atol=1e-4)
    torch.testing.assert_close(logits[:n], ref_logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(boxes[:n], ref_boxes, rtol=0, atol=1e-4)


def test_dino_shared_heads_are_one_tensor():
    """DINO registers one class Linear / box MLP for all six decoder layers
    under ``class_embed.N``, ``bbox_embed.N`` and
    ``transformer.decoder.{class,bbox}_embed.N``: each output branch 0..5
    is that one tensor (converted once), the names registered a second time
    are merged as aliases, and the unshared two-stage heads
    (``enc_out_*``) become branch 6."""
    manifest = load_manifest('dino_4scale_r50')
    ckpt = synthesize_checkpoint(manifest)
    conv = convert_checkpoint(ckpt)
    report, sd = conv.report, conv.state_dict
    second_names = {k for k in manifest['aliases']
                    if not k.startswith('transformer.')}
    assert len(second_names) == 48  # (1 class + 3 box layers) x 2 x 6
    assert {r.old for r in report.aliases} == second_names
    assert report.dropped == []
    for part in ('cls_branches.{}.weight', 'reg_branches.{}.0.weight'):
        pointers = {sd['bbox_head.' + part.format(i)].data_ptr()
                    for i in range(6)}
        assert len(pointers) == 1
        assert sd['bbox_head.' + part.format(6)].data_ptr() not in pointers
    assert torch.equal(sd['bbox_head.reg_branches.6.4.weight'],
                       ckpt['model']['transformer.enc_out_bbox_embed'
                                     '.layers.2.weight'])


def test_dino_different_tensors_under_shared_names_collide():
    """A file whose second registration of a shared head holds other
    values is refused (two different tensors for one output name)."""
    ckpt = synthesize_checkpoint(load_manifest('dino_4scale_r50'))
    key = 'class_embed.3.weight'
    ckpt['model'][key] = ckpt['model'][key].clone() + 1
    with pytest.raises(ConversionError):
        convert_checkpoint(ckpt)


def test_dino_classes_and_label_embedding():
    """Every class branch (the two-stage proposal one too) and the
    denoising label embedding go from COCO ids to the 80 classes;
    --keep-classes keeps the official rows."""
    ckpt = synthesize_checkpoint(load_manifest('dino_4scale_r50'))
    model = ckpt['model']
    sd = convert_checkpoint(ckpt).state_dict
    assert torch.equal(sd['dn_query_generator.label_embedding.weight'],
                       model['label_enc.weight'][COCO_IDS])
    assert torch.equal(sd['bbox_head.cls_branches.6.weight'],
                       model['transformer.enc_out_class_embed.weight']
                       [COCO_IDS])
    for i in range(6):
        assert torch.equal(sd[f'bbox_head.cls_branches.{i}.bias'],
                           model['class_embed.0.bias'][COCO_IDS])
    kept = convert_checkpoint(ckpt, keep_classes=True).state_dict
    assert kept['dn_query_generator.label_embedding.weight'].shape[0] == 92
    assert kept['bbox_head.cls_branches.6.weight'].shape[0] == 91


def test_remap_label_embedding():
    """92 label_enc rows (ids 0..90 + the row DINO never indexes) -> the
    rows of the 80 used ids; any other row count is refused."""
    rows = apply(DINO_LABEL_EMBEDDING,
                 torch.arange(92.)[:, None].expand(92, 3))
    assert rows[:, 0].tolist() == list(map(float, COCO_CATEGORY_IDS))
    with pytest.raises(ConversionError, match='--keep-classes'):
        apply(DINO_LABEL_EMBEDDING, torch.zeros(91, 3))


def test_dino_other_decoder_depth_is_refused():
    """The two-stage heads become branch 6 = MMDetection's
    cls_branches[num_layers]: a DINO with another decoder depth is refused
    with the reason, not converted into a wrong layout."""
    ckpt = synthesize_checkpoint(load_manifest('dino_4scale_r50'))
    ckpt['model'] = {k: v for k, v in ckpt['model'].items()
                     if not k.startswith('transformer.decoder.layers.5.')}
    with pytest.raises(ConversionError, match='5 decoder layers'):
        convert_checkpoint(ckpt)


@pytest.mark.parametrize('name, runner_up', [
    ('dino_4scale_r50', 'deformable_detr'),
    ('dino_5scale_r50', 'dino_4scale'),
    ('dab_detr_r50', 'conditional_detr'),
    ('dab_deformable_detr_r50', 'deformable_detr'),
    ('dn_deformable_detr_r50', 'dab_deformable_detr'),
])
def test_the_specific_format_outranks_its_base(name, runner_up):
    """Each official layout also matches the format it extends, always with
    fewer sentinels (DN-Deformable-DETR, built on DAB-Deformable-DETR, is
    told apart by its denoising label_enc)."""
    keys = list(synthesize_checkpoint(load_manifest(name))['model'])
    found = candidates(keys)
    assert found[0].name == CASES[name][0]
    assert found[1].name == runner_up and found[1].rank < found[0].rank


def test_dab_deformable_not_carried_is_explicit():
    """DAB-Deformable-DETR: the DAB query parts MMDetection has no module
    for are dropped with a 'NOT carried' reason and named in a note; the
    rest loads into DeformableDETR with box refinement."""
    ckpt = synthesize_checkpoint(load_manifest('dab_deformable_detr_r50'))
    conv = convert_checkpoint(ckpt)
    assert {r.old for r in conv.report.dropped} == {
        'tgt_embed.weight', 'refpoint_embed.weight',
        *(f'transformer.decoder.{m}.layers.{i}.{p}'
          for m in ('ref_point_head', 'query_scale') for i in (0, 1)
          for p in ('weight', 'bias'))}
    assert all(r.reason.startswith('NOT carried')
               for r in conv.report.dropped)
    assert any('DAB-Deformable-DETR has no exact MMDetection equivalent' in n
               for n in conv.notes)
    variant = conv.meta['variant']
    assert variant['with_box_refine'] and not variant['as_two_stage']


def test_dab_detr_shared_box_head_and_prelu():
    """DAB-DETR's one box MLP (``bbox_embed`` = the decoder's) is one
    tensor; the PReLU slopes of every FFN are carried."""
    manifest = load_manifest('dab_detr_r50')
    ckpt = synthesize_checkpoint(manifest)
    conv = convert_checkpoint(ckpt)
    assert {r.old for r in conv.report.aliases} == set(manifest['aliases'])
    assert len(manifest['aliases']) == 6
    for part in ('encoder', 'decoder'):
        for i in range(6):
            assert torch.equal(
                conv.state_dict[f'{part}.layers.{i}.ffn.layers.0.1.weight'],
                ckpt['model'][f'transformer.{part}.layers.{i}.activation'
                              '.weight'])


@pytest.mark.parametrize('name, config', [
    ('dino_4scale_r50',
     'configs/detr_family/dino-4scale_r50_official_coco.py'),
    ('dab_detr_r50', 'dab-detr_r50_8xb2-50e_coco.py'),
])
def test_convert_prints_the_mim_test_line(name, config, tmp_path, capsys):
    """``mmconv convert`` and ``detr_family2mmdet.py`` (its entry point; the
    script file runs in tests/test_console_scripts.py) write the same file
    and end with the line that evaluates it."""
    src = tmp_path / 'src.pth'
    torch.save(synthesize_checkpoint(load_manifest(name)), src)
    dst, dst2 = tmp_path / 'mmconv.pth', tmp_path / 'script.pth'
    assert mmconv_main(['convert', str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-1] == (
        f'Evaluate it: mim test mmdet {config} --checkpoint {dst}')
    assert detr_main([str(src), str(dst2)]) == 0
    script_out = capsys.readouterr().out
    assert (f'mim test mmdet {config} --checkpoint {dst2}'
            in script_out.splitlines()[-1])
    ours, theirs = load_file(str(dst)), load_file(str(dst2))
    assert ours['state_dict'].keys() == theirs['state_dict'].keys()
    for key, value in ours['state_dict'].items():
        assert torch.equal(theirs['state_dict'][key], value), key
