# Copyright (c) mmconv contributors. All rights reserved.
"""The installed commands, run as a user runs them: the ``mmconv``
executable of this environment (convert, inspect, check, formats), the
``tools/model_converters`` scripts with this environment's python, and
``mim``; each in a new process, from a directory outside the source tree
(slow tier)."""
import json
import os
import subprocess
import sys
from typing import List

import pytest
import torch

from mmconv import FAMILIES, FORMATS, __version__
from mmconv.containers import unwrap
from mmconv.reading import load_file
from tests.fixtures.official_layouts import (build_moco_v2,
                                             build_swav_training, save_layout)
from tests.fixtures.sources import SOURCES

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
CONVERTERS = os.path.join(ROOT, 'tools', 'model_converters')
SHIPPED = os.path.join(ROOT, 'configs', 'selfsup_pretrain',
                       'mask-rcnn_r50-mocov2-selfsup-raw-pre_fpn_1x_coco.py')
#: SyncBN builds fine without a process group, but keep the model light
LIGHT = ['model.backbone.norm_cfg.type=BN']


def _executable(name: str) -> str:
    """``name`` in this environment's ``bin`` (next to ``sys.executable``),
    as ``pip install`` wrote it."""
    path = os.path.join(BIN, name)
    assert os.access(path, os.X_OK), \
        f'{path} is missing: run bash tools/env/setup.sh'
    return path


def _run(command: List[str], cwd) -> subprocess.CompletedProcess:
    """Run ``command`` in ``cwd`` with the user's environment (no
    PYTHONPATH: the installed mmconv, not the source tree)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ('PYTHONPATH', 'PYTEST_XDIST_WORKER')}
    return subprocess.run([str(c) for c in command], cwd=str(cwd), env=env,
                          capture_output=True, text=True, timeout=900)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The failed command's one ``error:`` line, its last, and no
    traceback (third-party warnings, e.g. setuptools' pkg_resources
    deprecation when MMEngine imports it, may come before it)."""
    assert 'Traceback' not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines()
             if line.startswith('error:')]
    assert len(lines) == 1, proc.stderr
    assert proc.stderr.rstrip('\n').splitlines()[-1] == lines[0]
    return lines[0]


def _state_dict(path) -> dict:
    return unwrap(load_file(str(path))).state_dict


@pytest.fixture(scope='module')
def moco_file(module_tmp_path):
    """An official MoCo v2 ``.pth.tar`` (random weights)."""
    return save_layout(build_moco_v2(), str(module_tmp_path / 'moco'))


def test_entry_scripts_are_modern():
    """``mmconv`` and ``mim`` import their entry point directly; an
    old-style script resolves every requirement of the environment through
    pkg_resources first and dies on any conflict (DistributionNotFound)."""
    for name in ('mmconv', 'mim'):
        with open(_executable(name)) as f:
            text = f.read()
        assert 'pkg_resources' not in text, (name, text)
    with open(_executable('mmconv')) as f:
        assert 'from mmconv.cli import main' in f.read()


def test_version_and_formats(tmp_path):
    """``mmconv --version`` and ``mmconv formats -v``: every registered
    family and format is listed."""
    proc = _run([_executable('mmconv'), '--version'], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f'mmconv {__version__}'
    proc = _run([_executable('mmconv'), 'formats', '-v'], tmp_path)
    assert proc.returncode == 0, proc.stderr
    for family in FAMILIES.values():
        assert family.title in proc.stdout, family.name
    for name in FORMATS:
        assert f'  {name} ' in proc.stdout, name


def test_inspect_then_convert(moco_file, tmp_path):
    """``mmconv inspect`` detects the MoCo file; ``mmconv convert`` keeps
    exactly what inspect announced, and every written tensor equals its
    source tensor; a second run without ``--force`` exits 6 and a missing
    source exits 3, each with one line."""
    mmconv = _executable('mmconv')
    proc = _run([mmconv, 'inspect', moco_file, '--json'], tmp_path)
    assert proc.returncode == 0, proc.stderr
    announced = json.loads(proc.stdout)
    assert announced['format'] == 'moco' and announced['target'] == 'mmdet'
    assert len(announced['kept']) > 300

    out = tmp_path / 'mocov2_r50.pth'
    proc = _run([mmconv, 'convert', moco_file, out, '--json'], tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report['kept'] == announced['kept']
    assert report['output'] == str(out)
    source, written = _state_dict(moco_file), _state_dict(out)
    assert sorted(written) == sorted(new for _, new in report['kept'])
    for old, new in report['kept']:
        assert torch.equal(written[new], source[old]), (old, new)

    proc = _run([mmconv, 'convert', moco_file, out], tmp_path)
    assert proc.returncode == 6
    assert str(out) in _one_error_line(proc)
    proc = _run([mmconv, 'convert', tmp_path / 'missing.pth',
                 tmp_path / 'o.pth'], tmp_path)
    assert proc.returncode == 3
    assert 'missing.pth' in _one_error_line(proc)
    assert not (tmp_path / 'o.pth').exists()


def test_check_shipped_config(moco_file, tmp_path):
    """``mmconv check`` on the shipped config (``mmdet::`` base, read
    through MMEngine's Config and pkg_resources) with the raw MoCo file:
    every backbone tensor from it, exit 0; a SwAV file in the same config:
    exit 7, one line naming the backbone."""
    mmconv = _executable('mmconv')
    proc = _run([mmconv, 'check', SHIPPED, '--json', '--cfg-options',
                 f'model.backbone.init_cfg.checkpoint={moco_file}', *LIGHT],
                tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {r['module']: r for r in json.loads(proc.stdout)['rows']}
    assert rows['backbone']['from_ckpt'] == rows['backbone']['params'] > 0
    assert rows['backbone']['files'] == [moco_file]

    swav = save_layout(build_swav_training(), str(tmp_path / 'swav'))
    proc = _run([mmconv, 'check', SHIPPED, '--cfg-options',
                 f'model.backbone.init_cfg.checkpoint={swav}', *LIGHT],
                tmp_path)
    assert proc.returncode == 7, proc.stderr
    line = _one_error_line(proc)
    assert 'backbone' in line and "'swav'" in line


def test_model_converter_scripts(moco_file, tmp_path):
    """``python tools/model_converters/X.py`` as MMDetection users call
    them: MoCo -> MMDetection -> torchvision -> detectron2 -> MMDetection
    gives back the first MMDetection backbone tensor for tensor; a DETR
    checkpoint converts with detr_family2mmdet.py."""
    def script(name, *args):
        proc = _run([sys.executable, os.path.join(CONVERTERS, name), *args],
                    tmp_path)
        assert proc.returncode == 0, (name, proc.stderr)
        return proc.stdout

    names = sorted(f for f in os.listdir(CONVERTERS) if f.endswith('.py'))
    assert names == ['d2_to_mmdet.py', 'detr_family2mmdet.py',
                     'mmdet2torchvision.py', 'selfsup2mmdet.py',
                     'torchvision2d2.py']
    for name in names:
        assert 'usage:' in script(name, '--help')

    first, tv = tmp_path / 'mmdet.pth', tmp_path / 'tv.pth'
    d2, back = tmp_path / 'r50.pkl', tmp_path / 'back.pth'
    script('selfsup2mmdet.py', moco_file, first, '--selfsup', 'moco')
    script('mmdet2torchvision.py', first, tv)
    script('torchvision2d2.py', tv, d2)
    script('d2_to_mmdet.py', d2, back)
    a, b = _state_dict(first), _state_dict(back)
    assert len(a) > 300
    # detectron2 keeps no BN batch counters; everything else round-trips
    assert sorted(k for k in a if not k.endswith('num_batches_tracked')) \
        == sorted(k for k in b if not k.endswith('num_batches_tracked'))
    for key, value in b.items():
        if not key.endswith('num_batches_tracked'):
            assert torch.equal(value, a[key]), key

    detr, out = tmp_path / 'detr.pth', tmp_path / 'detr_mmdet.pth'
    torch.save(SOURCES['detr']().checkpoint, detr)
    printed = script('detr_family2mmdet.py', detr, out)
    assert 'mim test mmdet' in printed
    assert len(_state_dict(out)) > 0


def test_mim(tmp_path):
    """``mim --version`` and ``mim list`` (which reads the installed
    OpenMMLab packages through pkg_resources) run and see this stack."""
    from importlib.metadata import version
    mim = _executable('mim')
    proc = _run([mim, '--version'], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert version('openmim') in proc.stdout
    proc = _run([mim, 'list'], tmp_path)
    assert proc.returncode == 0, proc.stderr
    for package in ('mmdet', 'mmengine', 'mmcv'):
        assert f'{package} ' in proc.stdout or \
            f'{package}\n' in proc.stdout, proc.stdout
        assert version(package) in proc.stdout, (package, proc.stdout)
