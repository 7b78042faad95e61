# Copyright (c) mmconv contributors. All rights reserved.
"""detrex both ways (mmconv/formats/detrex.py): ``--to detrex`` equals what
detrex's own converters write (recorded), and detrex files convert into
MMDetection exactly as the official files do."""
import os
import subprocess
import sys

import pytest
import torch

from mmconv.cli import main as mmconv_main
from mmconv.detect import candidates
from mmconv.pipeline import convert_checkpoint
from mmconv.reading import load_file
from tests.fixtures.detr_checkpoints import (load_manifest,
                                             synthesize_checkpoint,
                                             synthesize_state_dict)
from tests.fixtures.detrex_checkpoints import (detrex_state_dict,
                                               load_record, recorded_names)
from tests.helpers.tiers import sweep

#: recorded layout -> the detrex format mmconv must detect for its output
DETREX_FORMAT = {
    'detr_r50': 'detrex_detr',
    'deformable_detr_r50': 'detrex_deformable_detr',
    'deformable_detr_refine_r50': 'detrex_deformable_detr',
    'deformable_detr_refine_twostage_r50': 'detrex_deformable_detr',
    'conditional_detr_r50': 'detrex_conditional_detr',
    'dn_deformable_detr_r50': 'detrex_dn_deformable_detr',
}
MMCONV = os.path.join(os.path.dirname(sys.executable), 'mmconv')


def test_every_recorded_converter_is_covered():
    assert set(recorded_names()) == set(DETREX_FORMAT)


@pytest.mark.parametrize('name', sorted(DETREX_FORMAT))
def test_to_detrex_equals_the_detrex_converter(name):
    """Key for key (in the converter's order) and tensor for tensor."""
    source = synthesize_state_dict(load_manifest(name))
    expected = detrex_state_dict(source, load_record(name))
    conv = convert_checkpoint({'model': source}, target='detrex')
    assert list(conv.state_dict) == list(expected)
    for key, value in expected.items():
        out = conv.state_dict[key]
        assert out.dtype == value.dtype and torch.equal(out, value), key
    # every source tensor is kept (aliases and un-renamed keys included)
    assert {r.old for r in conv.report.kept} == set(source)
    assert not conv.report.dropped


@pytest.mark.parametrize('name', sorted(DETREX_FORMAT))
def test_detrex_file_converts_as_the_official_file(name):
    """official -> detrex -> MMDetection == official -> MMDetection, with
    no --from: the detrex layout is detected ahead of detectron2's ResNet."""
    source = synthesize_state_dict(load_manifest(name))
    detrex = detrex_state_dict(source, load_record(name))
    found = candidates(list(detrex))
    assert found[0].name == DETREX_FORMAT[name]
    assert len(found) == 1 or found[1].rank < found[0].rank
    direct = convert_checkpoint({'model': source})
    back = convert_checkpoint({'model': detrex})
    assert back.format.name == DETREX_FORMAT[name]
    assert list(back.state_dict) == list(direct.state_dict)
    for key, value in direct.state_dict.items():
        assert torch.equal(back.state_dict[key], value), key
    accounted = {r.old for r in back.report.kept + back.report.aliases +
                 back.report.dropped}
    assert accounted == set(detrex)
    assert back.meta['mmdet_config'] == direct.meta['mmdet_config']


def test_report_lists_the_class_remapping():
    source = synthesize_state_dict(
        load_manifest('deformable_detr_refine_twostage_r50'))
    conv = convert_checkpoint({'model': source}, target='detrex')
    what = {key: text for key, _, _, text in conv.changed}
    assert 'remap_coco_classes' in what['class_embed.0.weight']
    assert 'keep_objectness_rows' in what['class_embed.6.weight']
    assert conv.changed[0].before[0] == 91 and conv.changed[0].after[0] == 80
    dn = convert_checkpoint({'model': synthesize_state_dict(
        load_manifest('dn_deformable_detr_r50'))}, target='detrex')
    label = [c for c in dn.changed if c.key == 'label_encoder.weight']
    assert label and label[0].before[0] == 92 and label[0].after[0] == 81


def test_detrex_not_carried_is_named():
    """What the MMDetection model has no place for is listed as not
    carried, never filled silently (DN-Deformable's denoising parts)."""
    detrex = detrex_state_dict(
        synthesize_state_dict(load_manifest('dn_deformable_detr_r50')),
        load_record('dn_deformable_detr_r50'))
    conv = convert_checkpoint({'model': detrex})
    dropped = {r.old: r.reason for r in conv.report.dropped}
    assert 'NOT carried' in dropped['label_encoder.weight']
    assert 'NOT carried' in dropped['refpoint_embed.weight']


@pytest.mark.parametrize('runner', sweep(['main', 'console'], ('main', )))
def test_cli_to_detrex_writes_the_model_container(tmp_path, runner):
    """``mmconv convert --to detrex`` (its entry point; the installed
    console script in the slow tier): the output is {'model': ...} and
    loads with torch.load(weights_only=True)."""
    name = 'detr_r50'
    ckpt = synthesize_checkpoint(load_manifest(name))
    src, dst = tmp_path / 'detr.pth', tmp_path / 'detr_detrex.pth'
    torch.save(ckpt, src)
    args = ['convert', str(src), str(dst), '--to', 'detrex']
    if runner == 'main':
        assert mmconv_main(args) == 0
    else:
        done = subprocess.run([MMCONV, *args], capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr
    out = torch.load(dst, weights_only=True)
    assert list(out) == ['model']
    expected = detrex_state_dict(ckpt['model'], load_record(name))
    assert list(out['model']) == list(expected)
    assert all(torch.equal(out['model'][k], v) for k, v in expected.items())
    # and back into MMDetection with no --from
    back = tmp_path / 'back.pth'
    assert mmconv_main(['convert', str(dst), str(back)]) == 0
    assert 'bbox_head.fc_cls.weight' in load_file(str(back))['state_dict']


@pytest.mark.parametrize('name', ['dino_4scale_r50', 'dab_detr_r50'])
def test_to_detrex_refused_where_detrex_has_no_converter(tmp_path, capsys,
                                                         name):
    src, dst = tmp_path / 'src.pth', tmp_path / 'out.pth'
    torch.save(synthesize_checkpoint(load_manifest(name)), src)
    assert mmconv_main(['convert', str(src), str(dst), '--to',
                        'detrex']) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and '--to detrex' in err, err
    assert not dst.exists()


def test_to_detrex_refused_for_a_backbone(tmp_path, capsys, tv_resnet50):
    src, dst = tmp_path / 'r50.pth', tmp_path / 'out.pth'
    torch.save(tv_resnet50.state_dict(), src)
    assert mmconv_main(['convert', str(src), str(dst), '--to',
                        'detrex']) == 2
    assert '--to detrex' in capsys.readouterr().err
    assert not dst.exists()
