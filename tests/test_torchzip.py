# Copyright (c) mmconv contributors. All rights reserved.
"""mmconv's own restricted reader of torch zip files (the read path on
torch < 2.6): same objects as torch's weights-only loader on every source
layout, the hostile corpus refused, crafted records refused."""
import argparse
import zipfile

import numpy as np
import pytest
import torch

from mmconv import InputError, UnsafeCheckpointError, load_file
from mmconv.reading import TORCH_WEIGHTS_ONLY_IS_SAFE
from mmconv.cli import preset_main
from tests.fixtures.sources import SOURCES
from tests.test_io import _malicious_corpus
from tests.helpers.tiers import sweep


def _same(a, b, where='checkpoint'):
    """Recursive equality: tensors bit-identical with the same dtype, shape
    and strides; containers, namespaces, numpy values equal."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert (a.dtype, a.shape, a.stride()) == (b.dtype, b.shape,
                                                  b.stride()), where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _same(a[k], b[k], f'{where}[{k!r}]')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f'{where}[{i}]')
    elif isinstance(a, argparse.Namespace) or type(a).__name__ == \
            'HistoryBuffer':  # plain objects: compare their state
        assert isinstance(b, type(a)), where  # (mmconv's validating
        # stand-ins are subclasses that pickle as the originals)
        _same(vars(a), vars(b), where)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    elif callable(a) and getattr(a, '__name__', '') == \
            'exclude_bias_and_norm':  # VICReg's: mmconv's inert stand-in
        assert b.__name__ == a.__name__, where
    else:
        assert type(a) is type(b) and (a == b or a != a), where


#: sources whose files hold different objects besides tensors (argparse
#: namespaces, VICReg's function, MMEngine's message hub, numpy blobs,
#: aliases, bf16 and several model families' layouts)
FAST_SOURCES = ('moco', 'vicreg', 'dino', 'mmpretrain', 'detectron2',
                'caffe2', 'detr', 'dino_4scale', 'mae', 'dinov2',
                'detrex_detr', 'dinov3_vit', 'timm_dinov3', 'convnext',
                'swin', 'hf_vit', 'vitdet_dinov3')


@pytest.mark.parametrize('name', sweep(SOURCES, FAST_SOURCES))
def test_same_objects_as_torch_weights_only(name, tmp_path):
    """Every registered format's source file reads to the same objects as
    torch's own (trusted, full) unpickler gives for these files we made."""
    from tests.fixtures.official_layouts import official_pickle_globals
    path = tmp_path / 'src.pth'
    try:
        source = SOURCES[name]()
    except ImportError as err:  # the light legs: no mmdet, timm...; and
        # transformers' models need torch >= 2.6
        why = err.name or str(err).strip().splitlines()[0]
        pytest.skip(f'{name} source needs {why}')
    with official_pickle_globals():
        torch.save(source.checkpoint, path)
        reference = torch.load(path, map_location='cpu', weights_only=False)
    _same(reference, load_file(str(path), reader='mmconv'))


def test_hostile_corpus_refused(tmp_path):
    """The same payloads as for torch's loader: refused, never run."""
    marker, files = _malicious_corpus(tmp_path)
    for what, path in files.items():
        with pytest.raises((UnsafeCheckpointError, InputError)) as err:
            load_file(str(path), reader='mmconv')
        assert str(path) in str(err.value) and '\n' not in str(err.value)
        assert not marker.exists(), what


def test_views_share_one_storage_and_never_write_the_file(tmp_path):
    """Views of one storage stay views; writing to a loaded tensor does not
    change the file (private memory map)."""
    base = torch.arange(12.)
    path = tmp_path / 'v.pth'
    torch.save({'a': base, 'b': base[3:9].view(2, 3)}, path)
    got = load_file(str(path), reader='mmconv')
    assert got['b'].data_ptr() == got['a'].data_ptr() + 3 * 4
    got['a'].add_(1)
    assert torch.equal(load_file(str(path), reader='mmconv')['a'], base)


def _rewrite(path, change):
    """Rewrite a torch zip with ``change(name, data) -> data``."""
    with zipfile.ZipFile(path) as z:
        items = [(n, z.read(n)) for n in z.namelist()]
    with zipfile.ZipFile(path, 'w') as z:
        for n, data in items:
            z.writestr(n, change(n, data))


def test_crafted_records_are_refused(tmp_path):
    """A storage record shorter than its tensors, and a compressed record:
    input errors, nothing read past a record."""
    path = tmp_path / 'short.pth'
    torch.save({'state_dict': {'w': torch.ones(1000)}}, path)
    _rewrite(path, lambda n, d: d[:100] if '/data/' in n else d)
    with pytest.raises(InputError, match='truncated|corrupt'):
        load_file(str(path), reader='mmconv')
    path = tmp_path / 'deflated.pth'
    torch.save({'state_dict': {'w': torch.ones(1000)}}, path)
    with zipfile.ZipFile(path) as z:
        items = [(n, z.read(n)) for n in z.namelist()]
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as z:
        for n, data in items:
            z.writestr(n, data)
    with pytest.raises(InputError):
        load_file(str(path), reader='mmconv')


def test_legacy_format_is_refused_with_the_fix(tmp_path):
    """The pre-1.6 format is not read by mmconv's reader: exit 4, the
    message says how to re-save it."""
    path = tmp_path / 'legacy.pth'
    torch.save({'state_dict': {'conv1.weight': torch.ones(1)}}, path,
               _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError, match='re-save it'):
        load_file(str(path), reader='mmconv')
    if TORCH_WEIGHTS_ONLY_IS_SAFE:
        assert load_file(str(path), reader='torch')['state_dict']


def test_selected_by_torch_version():
    """'auto' is torch's weights-only loader from torch 2.6 on, mmconv's
    reader before (CVE-2025-32434)."""
    from mmconv import reading as io
    major, minor = (int(x) for x in torch.__version__.split('.')[:2])
    assert io.TORCH_WEIGHTS_ONLY_IS_SAFE == ((major, minor) >= (2, 6))


def test_command_line_on_the_restricted_reader(tmp_path, monkeypatch):
    """With the reader forced to mmconv's (as on torch < 2.6), the command
    line converts a real MoCo file identically."""
    from mmconv import reading as io
    src = tmp_path / 'moco.pth.tar'
    torch.save(SOURCES['moco']().checkpoint, src)
    a, b = tmp_path / 'a.pth', tmp_path / 'b.pth'
    monkeypatch.setattr(io, 'TORCH_WEIGHTS_ONLY_IS_SAFE', True)
    assert preset_main('selfsup2mmdet', [str(src), str(a)]) == 0
    monkeypatch.setattr(io, 'TORCH_WEIGHTS_ONLY_IS_SAFE', False)
    assert preset_main('selfsup2mmdet', [str(src), str(b)]) == 0
    _same(load_file(str(a), reader='mmconv')['state_dict'],
          load_file(str(b), reader='mmconv')['state_dict'])
