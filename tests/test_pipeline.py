# Copyright (c) mmconv contributors. All rights reserved.
"""The one file pipeline, through the command line: load once, every
family, options refused the same way, Detectron1 files, --version."""
import re

import pytest
import torch

import mmconv.hub
import mmconv.reading
from mmconv.cli import main, preset_main
from tests.fixtures.sources import SOURCES


@pytest.fixture
def count_loads(monkeypatch):
    """Counts calls of the one file reader (``mmconv.reading.load_file``,
    as :mod:`mmconv.hub` calls it for every local source)."""
    calls = []
    real = mmconv.reading.load_file

    def counting(path, **kwargs):
        calls.append(path)
        return real(path, **kwargs)

    monkeypatch.setattr(mmconv.hub, 'load_file', counting)
    return calls


@pytest.mark.parametrize('name', ['detr', 'deformable_detr', 'caffe2'])
def test_convert_reads_the_source_once(name, tmp_path, count_loads):
    """`mmconv convert` with --from auto reads a DETR / Caffe2 file from
    disk exactly once (no per-family retry)."""
    src = tmp_path / 'src.pth'
    torch.save(SOURCES[name]().checkpoint, src)
    assert main(['convert', str(src), str(tmp_path / 'out.pth')]) == 0
    assert count_loads == [str(src)]
    count_loads.clear()
    assert main(['inspect', str(src)]) == 0
    assert count_loads == [str(src)]


def test_inspect_and_formats_cover_every_family(tmp_path, capsys):
    """`inspect` takes a DETR file (it used to exit 5); `formats` lists
    every registered format; `--version` exists."""
    from mmconv import FORMATS, __version__
    src = tmp_path / 'detr.pth'
    torch.save(SOURCES['detr']().checkpoint, src)
    assert main(['inspect', str(src)]) == 0
    out = capsys.readouterr().out
    assert 'format:   detr (DETR); detected' in out
    assert 'config:   mmdet::detr/detr_r50_8xb2-150e_coco.py' in out
    assert main(['formats', '-v']) == 0
    out = capsys.readouterr().out
    for name in FORMATS:
        assert f'  {name} ' in out, name
    with pytest.raises(SystemExit) as exit_:
        main(['--version'])
    assert exit_.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_detectron1_blobs_file_converts(tmp_path, capsys):
    """A Detectron1 detection file ({'blobs': ..., 'cfg': ...}, a non-array
    blob among them) converts with d2_to_mmdet.py and mmconv convert."""
    src = tmp_path / 'model_final.pkl'
    import pickle

    from mmconv.formats.resnet import to_numpy_tree
    ckpt = SOURCES['caffe2']().checkpoint
    with open(src, 'wb') as f:
        pickle.dump(to_numpy_tree(ckpt), f, protocol=4)
    assert preset_main('d2_to_mmdet', [str(src), str(tmp_path / 'a.pth')]) \
        == 0
    out = capsys.readouterr().out
    assert "checkpoint['blobs']" in out and 'blobs.lr' in out
    assert re.search(r'module: +(complete ResNet-50 backbone|ResNet-50 '
                     r'backbone \(not verified: mmdet is not installed\))',
                     out)
    assert main(['convert', str(src), str(tmp_path / 'b.pth')]) == 0


@pytest.mark.parametrize('args,flag', [
    (['--keep-fc'], '--keep-fc'),          # MMDetection output
    (['--keep-classes'], '--keep-classes'),  # a ResNet
])
def test_options_that_do_not_apply_exit_2_everywhere(tmp_path, capsys, args,
                                                     flag):
    """The same refusal (exit 2, one line naming the flag) from
    `mmconv convert` and the converter scripts; nothing written."""
    src = tmp_path / 'tv.pth'
    torch.save(SOURCES['torchvision']().checkpoint, src)
    dst = tmp_path / 'o.pth'
    for run in (lambda a: main(['convert', *a]),
                lambda a: preset_main('selfsup2mmdet', a),
                lambda a: preset_main('d2_to_mmdet', a)):
        assert run([str(src), str(dst), *args]) == 2
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and flag in err
        assert not dst.exists()


def test_scripts_stay_in_their_family(tmp_path, capsys):
    """detr_family2mmdet.py auto-detects DETR formats only and names the
    command for what the file is instead."""
    src = tmp_path / 'tv.pth'
    torch.save(SOURCES['torchvision']().checkpoint, src)
    assert preset_main('detr_family2mmdet',
                       [str(src), str(tmp_path / 'o.pth')]) == 5
    err = capsys.readouterr().err
    assert 'mmconv convert SRC DST --from torchvision' in err


def test_caffe2_to_detectron2(tmp_path, capsys):
    """MSRA blobs -> detectron2 .pkl (it used to fail with a KeyError on
    the FrozenBN statistics mmconv fills): every norm has its statistics,
    and the file reads back to the same backbone."""
    src = tmp_path / 'R-50.pkl'
    import pickle

    from mmconv.formats.resnet import to_numpy_tree
    blobs = SOURCES['caffe2']().checkpoint['blobs']
    with open(src, 'wb') as f:
        pickle.dump(to_numpy_tree({k: v for k, v in blobs.items()
                                   if k != 'lr'}), f, protocol=4)
    pkl, back = tmp_path / 'r50.pkl', tmp_path / 'back.pth'
    assert preset_main('d2_to_mmdet', [str(src), str(pkl), '--to',
                                       'detectron2']) == 0
    assert 'STRIDE_IN_1X1: True' in capsys.readouterr().out
    model = mmconv.reading.load_file(str(pkl))['model']
    assert 'stem.conv1.norm.running_var' in model
    assert 'res2.0.conv1.norm.running_mean' in model
    assert main(['convert', str(pkl), str(back)]) == 0
    a = mmconv.reading.load_file(str(back))['state_dict']
    direct = tmp_path / 'direct.pth'
    assert main(['convert', str(src), str(direct)]) == 0
    b = mmconv.reading.load_file(str(direct))['state_dict']
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_json_reports(tmp_path, capsys):
    """`inspect --json` and `convert --json` print one JSON document with
    the format, every key's fate and the output."""
    import json
    src = tmp_path / 'moco.pth.tar'
    torch.save(SOURCES['moco']().checkpoint, src)
    assert main(['inspect', str(src), '--json']) == 0
    report = json.loads(capsys.readouterr().out)
    assert report['format'] == 'moco' and report['target'] == 'mmdet'
    assert ['module.encoder_q.conv1.weight', 'conv1.weight'] in \
        report['kept']
    assert report['meta']['style'] == 'pytorch'
    dst = tmp_path / 'o.pth'
    assert main(['convert', str(src), str(dst), '--json']) == 0
    report = json.loads(capsys.readouterr().out)
    assert report['output'] == str(dst) and dst.exists()
    assert len(report['kept']) + len(report['dropped']) + \
        len(report['aliases']) == len(
            SOURCES['moco']().checkpoint['state_dict'])
