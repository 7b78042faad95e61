# Copyright (c) mmconv contributors. All rights reserved.
"""Safe loading and atomic writing."""
import argparse
import io
import os
import pickle
import tarfile
import zipfile

import numpy as np
import pytest
import torch

from mmconv import (InputError, OutputError, UnsafeCheckpointError,
                    load_file, save_file)
from mmconv.cli import preset_main
from mmconv.reading import TORCH_WEIGHTS_ONLY_IS_SAFE


class _Payload:
    """Unpickling this runs ``os.system`` (creates a marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


def _backbone():
    return {'conv1.weight': torch.randn(64, 3, 7, 7),
            'bn1.weight': torch.randn(64)}


def _malicious_corpus(tmp_path):
    """(name, path) of files whose loading would run code."""
    marker = tmp_path / 'PWNED'
    files = {}
    p = tmp_path / 'top.pth'
    torch.save(_Payload(marker), p)
    files['top-level payload'] = p
    p = tmp_path / 'nested.pth'
    torch.save({'state_dict': {**_backbone(), 'x': _Payload(marker)}}, p)
    files['payload nested in state_dict'] = p
    p = tmp_path / 'legacy.pth'
    torch.save({'state_dict': _backbone(), 'meta': _Payload(marker)}, p,
               _use_new_zipfile_serialization=False)
    files['payload in a legacy (non-zip) torch file'] = p
    p = tmp_path / 'evil.pkl'
    with open(p, 'wb') as f:
        pickle.dump({'model': {'conv1.weight': np.zeros(3)},
                     'x': _Payload(marker)}, f)
    files['payload inside a .pkl'] = p
    p = tmp_path / 'model.pth.tar'
    inner = io.BytesIO()
    torch.save({'state_dict': {'w': _Payload(marker)}}, inner)
    with tarfile.open(p, 'w') as tar:
        info = tarfile.TarInfo('checkpoint.pth')
        info.size = len(inner.getvalue())
        tar.addfile(info, io.BytesIO(inner.getvalue()))
    files['payload inside a real tar named .pth.tar'] = p
    p = tmp_path / 'model2.pth.tar'
    torch.save({'state_dict': _backbone(), 'args': _Payload(marker)}, p)
    files['payload inside a torch .pth.tar'] = p
    return marker, files


def test_malicious_files_are_refused_and_never_run(tmp_path):
    """Every payload is refused (exit 3 or 4), nothing runs or is written."""
    marker, files = _malicious_corpus(tmp_path)
    for name, path in files.items():
        dst = tmp_path / f'{path.name}.out.pth'
        with pytest.raises((UnsafeCheckpointError, InputError)) as err:
            load_file(str(path))
        assert str(path) in str(err.value), name
        code = preset_main('selfsup2mmdet', [str(path), str(dst)])
        assert code in (3, 4), name
        assert not dst.exists(), name
        assert not marker.exists(), name


def test_refusal_names_global_and_opt_in(tmp_path):
    """The message names the offending global and --unsafe-load."""
    marker, files = _malicious_corpus(tmp_path)
    with pytest.raises(UnsafeCheckpointError) as err:
        load_file(str(files['payload nested in state_dict']))
    msg = str(err.value)
    assert 'system' in msg and '--unsafe-load' in msg and '\n' not in msg
    assert not marker.exists()


def test_allowlisted_objects_load(tmp_path):
    """argparse.Namespace, numpy scalars/arrays and HistoryBuffer load."""
    from mmengine.logging import HistoryBuffer
    hist = HistoryBuffer()
    hist.update(1.5)
    ckpt = {'state_dict': _backbone(), 'args': argparse.Namespace(lr=0.1),
            'best': np.float64(0.5), 'arr': np.arange(3),
            'message_hub': {'log_scalars': {'loss': hist}}}
    p = tmp_path / 'ok.pth'
    torch.save(ckpt, p)
    got = load_file(str(p))
    assert got['args'].lr == 0.1 and got['best'] == 0.5
    assert got['message_hub']['log_scalars']['loss'].current() == 1.5


@pytest.mark.parametrize('offset', [0.1, 0.5, 0.9, 0.999])
def test_truncated_zip_is_refused(tmp_path, offset):
    """A download cut at several offsets: input error, no output."""
    p = tmp_path / 'full.pth'
    torch.save({'state_dict': _backbone()}, p)
    data = p.read_bytes()
    cut = tmp_path / 'cut.pth'
    cut.write_bytes(data[:int(len(data) * offset)])
    with pytest.raises(InputError, match='truncated'):
        load_file(str(cut))
    assert preset_main('selfsup2mmdet', [str(cut), str(tmp_path / 'o.pth')]) == 3
    assert not (tmp_path / 'o.pth').exists()


@pytest.mark.parametrize('kind', ['random', 'zip-not-torch', 'empty-dict',
                                  'non-tensors', 'empty-file', 'directory',
                                  'missing', 'truncated-pkl'])
def test_bad_inputs(tmp_path, kind):
    """Each bad input: one-line error naming the file, exit code, no file."""
    p = tmp_path / 'in.pth'
    if kind == 'random':
        p.write_bytes(np.random.RandomState(0).bytes(4096))
    elif kind == 'zip-not-torch':
        with zipfile.ZipFile(p, 'w') as z:
            z.writestr('hello.txt', 'not a checkpoint')
    elif kind == 'empty-dict':
        torch.save({}, p)
    elif kind == 'non-tensors':
        torch.save({'state_dict': {'a': 1, 'b': [1, 2]}}, p)
    elif kind == 'empty-file':
        p.write_bytes(b'')
    elif kind == 'directory':
        p.mkdir()
    elif kind == 'truncated-pkl':
        p = tmp_path / 'in.pkl'
        p.write_bytes(pickle.dumps({'model': {'w': np.zeros(100)}})[:50])
    dst = tmp_path / 'out.pth'
    code = preset_main('selfsup2mmdet', [str(p), str(dst)])
    assert code == 3, kind
    assert not dst.exists()


def test_atomic_write_refusals(tmp_path):
    """Existing DST needs --force; DST == SRC refused; missing dir."""
    src = tmp_path / 'src.pth'
    torch.save(_backbone(), src)
    dst = tmp_path / 'dst.pth'
    dst.write_bytes(b'old')
    assert preset_main('selfsup2mmdet', [str(src), str(dst)]) == 6
    assert dst.read_bytes() == b'old'
    assert preset_main('selfsup2mmdet', [str(src), str(src), '--force']) == 6
    assert torch.load(src).keys() == _backbone().keys()
    assert preset_main('selfsup2mmdet',
        [str(src), str(tmp_path / 'nope' / 'x.pth')]) == 6
    assert preset_main('selfsup2mmdet', [str(src), str(dst), '--force']) == 0
    assert set(torch.load(dst)['state_dict']) == set(_backbone())
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith('.')] \
        == []


def test_publish_and_safetensors(tmp_path):
    """--publish adds the sha256 prefix; .safetensors round-trips."""
    import hashlib
    src = tmp_path / 'src.pth'
    torch.save(_backbone(), src)
    path, sha = save_file({'state_dict': _backbone(), 'meta': {'a': 1}},
                          str(tmp_path / 'pub.pth'), publish=True)
    assert path.endswith(f'pub-{sha[:8]}.pth')
    assert hashlib.sha256(open(path, 'rb').read()).hexdigest() == sha
    out = tmp_path / 'out.safetensors'
    assert preset_main('selfsup2mmdet', [str(src), str(out)]) == 0
    got = load_file(str(out))
    for k, v in torch.load(src).items():
        assert torch.equal(got['state_dict'][k], v)
    assert got['meta']['source_format'] == 'mmdet'


def test_disk_full_leaves_nothing(tmp_path, monkeypatch):
    """ENOSPC mid-write: exit 6 'no space', old DST intact, no temp file."""
    import errno

    import mmconv.writing as mio
    src = tmp_path / 'src.pth'
    torch.save(_backbone(), src)
    dst = tmp_path / 'dst.pth'
    dst.write_bytes(b'old')

    def full_disk(obj, f):  # torch.save / stream_save(obj, path or file)
        if isinstance(f, str):
            with open(f, 'ab') as out:
                out.write(b'x' * 1000)
        else:
            f.write(b'x' * 1000)
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(mio.torch, 'save', full_disk)
    monkeypatch.setattr(mio, 'stream_save', full_disk)  # streamed sources
    with pytest.raises(OutputError, match='no space left'):
        save_file({'state_dict': _backbone()}, str(dst), force=True)
    assert preset_main('selfsup2mmdet', [str(src), str(dst), '--force']) == 6
    assert dst.read_bytes() == b'old'
    assert sorted(f.name for f in tmp_path.iterdir()) == ['dst.pth',
                                                          'src.pth']


def test_mmengine_checkpoints_load_through_mmengine(tmp_path):
    """After `import mmconv`, MMEngine's own checkpoints (HistoryBuffer in
    message_hub) load through MMEngine's CheckpointLoader, which `load_from`,
    `resume` and `mim test` use and mmconv points at its safe reader; torch's
    own weights-only loader is left as it is (it refuses them, as without
    mmconv); code still never runs."""
    from mmengine.logging import HistoryBuffer, MessageHub
    from mmengine.runner.checkpoint import _load_checkpoint, load_checkpoint
    hub = MessageHub.get_instance('mmconv-test')
    hub.update_scalar('train/loss', 1.25)
    model = torch.nn.Conv2d(3, 4, 3)
    p = tmp_path / 'epoch_1.pth'
    torch.save({'meta': {'epoch': 1}, 'state_dict': model.state_dict(),
                'message_hub': hub.state_dict()}, p)
    got = _load_checkpoint(str(p), map_location='cpu')  # resume, load_from
    assert isinstance(got['message_hub']['log_scalars']['train/loss'],
                      HistoryBuffer)
    resumed = MessageHub.get_instance('mmconv-test-resumed')
    resumed.load_state_dict(got['message_hub'])
    assert resumed.get_scalar('train/loss').current() == 1.25
    other = torch.nn.Conv2d(3, 4, 3)
    load_checkpoint(other, str(p), map_location='cpu')  # `mim test`
    assert torch.equal(other.weight, model.weight)
    marker = tmp_path / 'PWNED'
    torch.save({'x': _Payload(marker)}, tmp_path / 'evil.pth')
    with pytest.raises(UnsafeCheckpointError):
        _load_checkpoint(str(tmp_path / 'evil.pth'), map_location='cpu')
    if TORCH_WEIGHTS_ONLY_IS_SAFE:  # torch's default weights_only=True
        with pytest.raises(pickle.UnpicklingError):
            torch.load(p)  # HistoryBuffer: not widened by mmconv
        with pytest.raises(pickle.UnpicklingError):
            torch.load(tmp_path / 'evil.pth')
    assert not marker.exists()


def test_getattr_is_not_a_general_escape(tmp_path):
    """The pickle `getattr` admitted for HistoryBuffer answers nothing else."""
    class Sneaky:
        def __reduce__(self):
            return (getattr, (argparse.Namespace, '__init__'))

    p = tmp_path / 'sneaky.pth'
    torch.save({'state_dict': _backbone(), 'x': Sneaky()}, p)
    with pytest.raises((UnsafeCheckpointError, InputError)):
        load_file(str(p))
    if TORCH_WEIGHTS_ONLY_IS_SAFE:  # torch's own loader refuses it too
        with pytest.raises(pickle.UnpicklingError):
            torch.load(p)


def test_history_buffer_loads_in_a_fresh_process(tmp_path):
    """A checkpoint with HistoryBuffers loads in a process that never made
    one (the class registers its statistics lazily)."""
    import subprocess
    import sys
    from mmengine.logging import MessageHub
    hub = MessageHub.get_instance('mmconv-fresh')
    hub.update_scalar('loss', 2.0)
    p = tmp_path / 'epoch_1.pth'
    torch.save({'state_dict': _backbone(), 'message_hub': hub.state_dict()},
               p)
    code = ('import sys, torch, mmconv\n'
            'from mmengine.runner.checkpoint import _load_checkpoint\n'
            'd = mmconv.load_file(sys.argv[1])\n'
            'e = _load_checkpoint(sys.argv[1], map_location="cpu")\n'
            'try:\n'
            '    torch.load(sys.argv[1], weights_only=True)\n'
            '    plain = "loaded"\n'
            'except Exception:\n'
            '    plain = "refused"\n'
            "print(d['message_hub']['log_scalars']['loss'].current(), "
            "e['message_hub']['log_scalars']['loss'].current(), plain)")
    out = subprocess.run([sys.executable, '-c', code, str(p)], check=True,
                         capture_output=True, text=True).stdout
    # torch's own weights-only loader refuses HistoryBuffer, with or without
    # mmconv (before torch 2.4 it admits no extra globals at all)
    assert out.splitlines()[-1].split() == ['2.0', '2.0', 'refused']


def test_vicreg_function_reference_loads(tmp_path):
    """VICReg checkpoints reference `__main__.exclude_bias_and_norm` in the
    optimizer param groups; it resolves to an inert stand-in."""
    import pickletools
    p = tmp_path / 'model.pth'
    torch.save({'model': _backbone(), 'optimizer': {'param_groups': [
        {'weight_decay_filter': np.ndarray}]}}, p)
    # rewrite the pickled global into the one VICReg files contain
    import zipfile as zf
    with zf.ZipFile(p) as z:
        names = z.namelist()
        data = {n: z.read(n) for n in names}
    pkl = next(n for n in names if n.endswith('data.pkl'))
    old = b'cnumpy\nndarray\n'  # protocol-2 GLOBAL opcode
    new = b'c__main__\nexclude_bias_and_norm\n'
    assert old in data[pkl]
    data[pkl] = data[pkl].replace(old, new)
    pickletools.dis(data[pkl], out=open(os.devnull, 'w'))
    with zf.ZipFile(p, 'w') as z:
        for n in names:
            z.writestr(n, data[n])
    got = load_file(str(p))
    fn = got['optimizer']['param_groups'][0]['weight_decay_filter']
    assert fn.__name__ == 'exclude_bias_and_norm'
    assert set(got['model']) == set(_backbone())
