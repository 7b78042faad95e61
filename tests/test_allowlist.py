# Copyright (c) mmconv contributors. All rights reserved.
"""The allowlist: numpy and MMEngine values only through validating
stand-ins, on every reader, and torch's process-wide allowlist untouched.

Crafted files run in subprocesses: a memory-corrupting file must show as a
failed test (signal 11), not crash pytest.
"""
import argparse
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch

from mmconv.allowlist import (SAFE_GLOBALS, MalformedValue, Namespace,
                              RefusedValue, RestrictedUnpickler,
                              allowed_global, safe_globals_context)
from mmconv.reading import TORCH_WEIGHTS_ONLY_IS_SAFE, load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HISTORY = 'mmengine.logging.history_buffer'

# ------------------------------------------------- raw protocol-2 opcodes --
NONE, TRUE, FALSE = b'N', b'\x88', b'\x89'


def glob(module: str, name: str) -> bytes:
    """GLOBAL module.name"""
    return b'c' + module.encode() + b'\n' + name.encode() + b'\n'


def text(value: str) -> bytes:
    """BINUNICODE value"""
    data = value.encode('utf-8')
    return b'X' + struct.pack('<I', len(data)) + data


def num(value: int) -> bytes:
    """BININT value"""
    return b'J' + struct.pack('<i', value)


def tup(*items: bytes) -> bytes:
    """MARK items TUPLE"""
    return b'(' + b''.join(items) + b't'


def lst(*items: bytes) -> bytes:
    """EMPTY_LIST MARK items APPENDS"""
    return b']' + b'(' + b''.join(items) + b'e'


def dct(**items: bytes) -> bytes:
    """EMPTY_DICT MARK key value ... SETITEMS"""
    return b'}(' + b''.join(text(k) + v for k, v in items.items()) + b'u'


def call(func: bytes, *args: bytes) -> bytes:
    """func(*args) via REDUCE"""
    return func + tup(*args) + b'R'


def raw(data: bytes, encoding: str = 'latin1') -> bytes:
    """bytes as protocol 2 stores them: _codecs.encode(str, 'latin1')"""
    return call(glob('_codecs', 'encode'), text(data.decode('latin-1')),
                text(encoding))


def dstate(order: str = '<', subarray: bytes = NONE, names: bytes = NONE,
           fields: bytes = NONE, elsize: int = -1, alignment: int = -1,
           flags: int = 0) -> bytes:
    """numpy's version-3 dtype state"""
    return tup(num(3), text(order), subarray, names, fields, num(elsize),
               num(alignment), num(flags))


def dtype(code: str = 'f8', state: bytes = None) -> bytes:
    """numpy.dtype(code, False, True) BUILD state"""
    return call(glob('numpy', 'dtype'), text(code), FALSE, TRUE) + (
        dstate() if state is None else state) + b'b'


def empty_array(subtype: bytes = None, shape: bytes = None) -> bytes:
    """_reconstruct(ndarray, (0,), b'b')"""
    return call(glob('numpy.core.multiarray', '_reconstruct'),
                glob('numpy', 'ndarray') if subtype is None else subtype,
                tup(num(0)) if shape is None else shape, raw(b'b'))


def astate(shape=(2, ), dt: bytes = None, data: bytes = b'\0' * 16,
           fortran: bytes = FALSE) -> bytes:
    """numpy's version-1 array state"""
    return tup(num(1), tup(*map(num, shape)), dtype() if dt is None else dt,
               fortran, raw(data) if isinstance(data, bytes) else data)


def array(shape=(2, ), dt: bytes = None, data: bytes = b'\0' * 16) -> bytes:
    """a numpy array as numpy pickles it (protocol 2)"""
    return empty_array() + astate(shape, dt, data) + b'b'


def history(state: bytes) -> bytes:
    """HistoryBuffer as pickled by MMEngine: NEWOBJ () BUILD state"""
    return glob(HISTORY, 'HistoryBuffer') + b')\x81' + state + b'b'


def statistic(name: str) -> bytes:
    """getattr(HistoryBuffer, name)"""
    return call(glob('__builtin__', 'getattr'),
                glob(HISTORY, 'HistoryBuffer'), text(name))


def history_state(**overrides: bytes) -> bytes:
    items = dict(max_length=num(1000000),
                 _log_history=array((1, ), data=b'\0' * 8),
                 _count_history=array((1, ), data=b'\0' * 8),
                 statistics_methods=dct(mean=statistic('mean')))
    items.update(overrides)
    return dct(**{k: v for k, v in items.items() if v is not None})


#: the issue's attack: 16 bytes of the file become object pointers
POINTERS = struct.pack('<QQ', 0x4141414141414141, 0x4242424242424242)
OBJECT_FIELD = dct(a=tup(dtype('O8', dstate('|', flags=63)), num(0)))
#: a structured dtype whose field 'a' holds object pointers, flagged as
#: holding objects but not as pickled as a list: numpy takes the bytes
STRUCTURED = dtype('V8', dstate('|', names=tup(text('a')),
                                fields=OBJECT_FIELD, elsize=8, alignment=1,
                                flags=61))

#: name -> (pickled value, exit code of `mmconv inspect`). 4: refused as
#: unsafe (an allowlisted global used beyond what mmconv admits), 3: a
#: malformed record. Sets: the code depends on the reader.
CASES: Dict[str, Tuple[bytes, object]] = {
    # numpy dtypes: only plain numeric ones, with numpy's plain state
    'dtype-object-flag': (array(dt=dtype('f8', dstate(flags=63)),
                                data=POINTERS), 4),
    'dtype-object-code': (array(dt=dtype('O8', dstate('|', flags=63)),
                                data=POINTERS), 4),
    # (with plain numpy this one frees 0x4141414141414141: signal 11)
    'dtype-structured-object-field': (array(dt=STRUCTURED, data=POINTERS),
                                      4),
    'dtype-structured-alone': (STRUCTURED, 4),
    'dtype-object-flag-alone': (dtype('f8', dstate(flags=63)), 4),
    'dtype-odd-flag': (array(dt=dtype('f8', dstate(flags=1))), 4),
    'dtype-odd-elsize': (array(dt=dtype('f8', dstate(elsize=16))), 4),
    'dtype-odd-alignment': (array(dt=dtype('f8', dstate(alignment=4))), 4),
    'dtype-subarray': (dtype('f8', dstate(subarray=tup(dtype(), tup(
        num(2))))), 4),
    'dtype-version-4': (dtype('f8', tup(num(4), text('<'), NONE, NONE, NONE,
                                        num(-1), num(-1), num(0), NONE)), 4),
    'dtype-unicode': (array(dt=dtype('U4', dstate())), 4),
    'dtype-datetime': (array(dt=dtype('M8', dstate())), 4),
    'dtype-longdouble': (array(dt=dtype('f16', dstate())), 4),
    'dtype-bad-byte-order': (array(dt=dtype('f8', dstate('x'))), 3),
    # numpy arrays: exactly shape x itemsize bytes, set once
    'array-short-data': (array((4, )), 3),
    'array-long-data': (array((1, )), 3),
    'array-negative-shape': (array((-1, )), 3),
    'array-too-many-dims': (array((1, ) * 33, data=b'\0' * 8), 3),
    'array-dtype-not-a-dtype': (array(dt=text('f8')), 3),
    'array-version-0-state': (empty_array() + tup(
        tup(num(2)), dtype(), FALSE, raw(b'\0' * 16)) + b'b', 3),
    'array-fortran-flag-2': (empty_array() + astate(fortran=num(2)) + b'b',
                             3),
    'array-object-list-data': (empty_array() + astate(
        data=lst(num(1), num(2))) + b'b', 3),
    'array-second-state': (empty_array() + astate() + b'b' + astate(
        (4, ), data=b'\0' * 32) + b'b', 4),
    'array-reconstruct-subtype': (empty_array(
        subtype=glob('collections', 'OrderedDict')), 4),
    'array-reconstruct-shape': (empty_array(shape=tup(num(5))), 3),
    'array-newobj': (glob('numpy', 'ndarray') + tup(
        tup(num(2)), text('O')) + b'\x81', 4),
    'array-direct-call': (call(glob('numpy', 'ndarray'), tup(num(2)),
                               text('O')), 4),
    'frombuffer-short-data': (call(glob('numpy.core.numeric', '_frombuffer'),
                                   raw(b'\0' * 16), dtype(), tup(num(3)),
                                   text('C')), 3),
    'frombuffer-odd-order': (call(glob('numpy._core.numeric', '_frombuffer'),
                                  raw(b'\0' * 16), dtype(), tup(num(2)),
                                  text('K')), 3),
    # numpy scalars
    'scalar-short-data': (call(glob('numpy.core.multiarray', 'scalar'),
                               dtype(), raw(b'\0' * 3)), 3),
    'scalar-object-dtype': (call(glob('numpy.core.multiarray', 'scalar'),
                                 dtype('O8', dstate('|', flags=63)),
                                 raw(POINTERS[:8])), 4),
    'scalar-dtype-not-a-dtype': (call(glob('numpy._core.multiarray',
                                           'scalar'), text('f8'),
                                      raw(b'\0' * 8)), 3),
    # bytes of protocol 2
    'codecs-unknown-encoding': (raw(b'abc', 'no-such-codec'), 4),
    'codecs-not-latin1-text': (call(glob('_codecs', 'encode'),
                                    text('\u20ac'), text('latin1')), 3),
    'bytes-with-arguments': (call(glob('__builtin__', 'bytes'),
                                  num(1 << 30)), 4),
    # MMEngine's HistoryBuffer
    'history-newobj-arguments': (glob(HISTORY, 'HistoryBuffer') + tup(
        text('a'), text('bb')) + b'\x81', 4),
    'history-call-arguments': (call(glob(HISTORY, 'HistoryBuffer'),
                                    lst(num(1)), lst(num(1), num(2))), 4),
    'history-extra-attribute': (history(history_state(
        _statistics_methods=dct())), 4),
    'history-foreign-statistic': (history(history_state(
        statistics_methods=dct(mean=glob('__builtin__', 'set')))), 4),
    'history-unknown-statistic': (history(history_state(
        statistics_methods=dct(evil=statistic('mean')))), 4),
    'history-code-statistic': (history(history_state(
        statistics_methods=dct(mean=glob('posix', 'system')))), 4),
    'history-bad-max-length': (history(history_state(max_length=num(-1))),
                               3),
    'history-unequal-lengths': (history(history_state(
        _log_history=array((2, )))), 3),
    'history-list-history': (history(history_state(
        _log_history=lst(num(1)))), 3),
    'history-complex-history': (history(history_state(
        _log_history=array((1, ), dt=dtype('c16'), data=b'\0' * 16))), 3),
    'history-state-not-dict': (history(tup(num(1))), 3),
    'getattr-other-attribute': (call(glob('__builtin__', 'getattr'),
                                     glob('argparse', 'Namespace'),
                                     text('__init__')), 4),
    # a BUILD applied to an allowlisted class itself must not change it
    'poison-namespace-class': (glob('argparse', 'Namespace') + tup(
        NONE, dct(mmconv_poisoned=num(1))) + b'b', {3, 4}),
    'poison-dtype-class': (glob('numpy', 'dtype') + tup(
        NONE, dct(__setstate__=NONE)) + b'b', {3, 4}),
    'poison-stand-in-function': (glob('numpy.core.multiarray', 'scalar') +
                                 tup(NONE, dct(__call__=NONE)) + b'b',
                                 {3, 4}),
    'poison-namespace-instance-class': (glob('argparse', 'Namespace') +
                                        b')\x81' + tup(NONE, dct(
                                            __class__=glob(
                                                HISTORY, 'HistoryBuffer')))
                                        + b'b', {3, 4}),
}

#: names the .pkl reader refuses outright (not numpy): always exit 4
PKL_REFUSED = ('history-', 'getattr-', 'poison-namespace')

PLACEHOLDER = 'MMCONV_PLACEHOLDER_VALUE'


def _splice(pkl: bytes, fragment: bytes) -> bytes:
    """Put ``fragment`` where the placeholder string was pickled."""
    old = text(PLACEHOLDER)
    assert pkl.count(old) == 1
    return pkl.replace(old, fragment)


def _torch_file(path: str, fragment: bytes) -> None:
    """A real torch.save zip whose 'x' is the crafted ``fragment``."""
    buf = io.BytesIO()
    torch.save({'state_dict': {'w': torch.ones(2)}, 'x': PLACEHOLDER}, buf)
    with zipfile.ZipFile(buf) as z:
        records = {n: z.read(n) for n in z.namelist()}
    name = next(n for n in records if n.endswith('/data.pkl'))
    records[name] = _splice(records[name], fragment)
    with zipfile.ZipFile(path, 'w') as z:
        for n, data in records.items():
            z.writestr(n, data)


def _pkl_file(path: str, fragment: bytes) -> None:
    """A detectron2-style .pkl whose 'x' is the crafted ``fragment``."""
    pkl = pickle.dumps({'model': {'w': np.ones(2, np.float32)},
                        'x': PLACEHOLDER}, 2)
    with open(path, 'wb') as f:
        f.write(_splice(pkl, fragment))


def _expected(name: str, kind: str) -> set:
    code = CASES[name][1]
    if kind == 'pkl' and name.startswith(PKL_REFUSED):
        return {4}
    return set(code) if isinstance(code, set) else {code}


@pytest.fixture(scope='module')
def crafted(module_tmp_path) -> Dict[str, Dict[str, str]]:
    """kind ('pth' / 'pkl') -> {case name: path}."""
    out: Dict[str, Dict[str, str]] = {'pth': {}, 'pkl': {}}
    for name, (fragment, _) in CASES.items():
        out['pth'][name] = str(module_tmp_path / f'{name}.pth')
        _torch_file(out['pth'][name], fragment)
        out['pkl'][name] = str(module_tmp_path / f'{name}.pkl')
        _pkl_file(out['pkl'][name], fragment)
    return out


def test_crafted_pickles_are_well_formed(crafted):
    """Every crafted data.pkl is a complete pickle (so a refusal is the
    allowlist's doing, not a syntax error)."""
    import pickletools
    for name, path in crafted['pth'].items():
        with zipfile.ZipFile(path) as z:
            data = z.read(next(n for n in z.namelist()
                               if n.endswith('data.pkl')))
        pickletools.dis(data, out=io.StringIO())  # raises if malformed
    for name, path in crafted['pkl'].items():
        with open(path, 'rb') as f:
            pickletools.dis(f.read(), out=io.StringIO())


def test_corpus_holds_a_real_attack(crafted):
    """Control: unpickled by plain pickle (what the old allowlist let numpy
    do), the structured-dtype file corrupts memory; the process fails."""
    code = ('import gc, pickle, sys; o = pickle.load(open(sys.argv[1], '
            '"rb")); del o; gc.collect()')
    proc = subprocess.run([sys.executable, '-c', code,
                           crafted['pkl']['dtype-structured-object-field']],
                          capture_output=True, timeout=120)
    assert proc.returncode != 0


# ------------------------------------------------------------ subprocesses --
RUNNER = r'''
import argparse, contextlib, gc, io, json, os, sys
mode, listing = sys.argv[1], sys.argv[2]
paths = json.load(open(listing))


def emit(*row):
    print(json.dumps(row), flush=True)  # streamed: a crash shows where


# gc.collect() after each file makes a corrupt object crash at once; with
# gc.freeze() after it, each collect traverses only the objects made since
# (the last file's), not the whole of torch again (0.1 s a file)


if mode in ('torch', 'mmconv'):
    from mmconv import reading
    from mmconv.cli import main
    from mmconv.errors import MMConvError
    reading.TORCH_WEIGHTS_ONLY_IS_SAFE = mode == 'torch'  # 'auto' -> mode
    for path in paths:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), \
                contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(['inspect', path])
            except BaseException as exc:
                code = 'uncaught %s: %s' % (type(exc).__name__, exc)
        try:  # load again and print everything: a bad dtype crashes here
            obj = reading.load_file(path, reader=mode)
            text = repr(obj)
            del obj
            direct = 0
        except MMConvError as exc:
            direct = exc.exit_code
        except BaseException as exc:
            direct = 'uncaught %s: %s' % (type(exc).__name__, exc)
        gc.collect()
        gc.freeze()  # survivors were traversed: the next collect is quick
        emit(path, code, direct, err.getvalue())
    from mmconv import allowlist
    poisoned = [repr(c) for c in (argparse.Namespace, allowlist.Namespace,
                                  allowlist._DType, allowlist._NDArray)
                if 'mmconv_poisoned' in dir(c)]
    poisoned += [] if callable(vars(allowlist._DType)['__setstate__']) \
        else ['_DType.__setstate__']
    emit('poisoned', poisoned)
elif mode in ('layer-pkl', 'layer-torch'):  # the stand-ins on their own
    import pickle
    from mmconv import allowlist, reading
    allowlist.admit_lazy('mmengine.logging.history_buffer.HistoryBuffer')
    for path in paths:
        try:
            if mode == 'layer-pkl':
                with open(path, 'rb') as f:
                    obj = allowlist.RestrictedUnpickler(
                        f, encoding='latin1').load()
            else:
                obj = reading._torch_load(path, False, False)
            text = repr(obj)
            del obj
            code = 0
        except allowlist.RefusedValue:
            code = 4
        except allowlist.MalformedValue:
            code = 3
        except pickle.UnpicklingError as exc:  # as load_file tells them
            code = 4 if reading._refused_global(exc) else 3
        except (EOFError, ValueError, TypeError, AttributeError,
                IndexError, KeyError) as exc:  # load_file: corrupt
            code = 3
        except BaseException as exc:
            code = 'uncaught %s: %s' % (type(exc).__name__, exc)
        gc.collect()
        gc.freeze()  # survivors were traversed: the next collect is quick
        emit(path, code)
else:  # 'plain' / 'plain+mmconv': torch's own weights-only loader
    import torch
    import mmengine.runner.checkpoint  # (its imports add torch's DTensor)
    ser = torch.serialization

    def safe_globals():
        return sorted(g[1] if isinstance(g, tuple) else '%s.%s' % (
            getattr(g, '__module__', '?'), getattr(g, '__qualname__', '?'))
            for g in ser.get_safe_globals()) \
            if hasattr(ser, 'get_safe_globals') else []

    if mode == 'plain+mmconv':  # as in an MMEngine run with custom_imports
        import mmconv
        from mmconv.reading import load_file
    if mode == 'plain+mmconv':
        for path in paths:  # mmconv's own loads come and go meanwhile
            try:
                load_file(path)
            except Exception:
                pass
    for path in paths:
        try:
            torch.load(path, weights_only=True)
            out = 'loaded'
        except Exception as exc:
            out = 'refused'
        gc.collect()
        gc.freeze()  # survivors were traversed: the next collect is quick
        emit(path, out)
    emit('safe_globals', safe_globals())
'''


def _run(tmp_path, mode: str, paths: List[str]) -> Dict[str, list]:
    """Run :data:`RUNNER` in a fresh interpreter; its rows by path."""
    script = tmp_path / 'runner.py'
    script.write_text(RUNNER)
    listing = tmp_path / f'{mode}.json'
    listing.write_text(json.dumps(paths))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
    proc = subprocess.run([sys.executable, str(script), mode, str(listing)],
                          capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=900)
    rows = [json.loads(line) for line in proc.stdout.splitlines()
            if line.startswith('[')]
    done = [r[0] for r in rows]
    assert proc.returncode == 0, (
        f'{mode} reader process died with {proc.returncode} after '
        f'{done[-1:]} (next: {paths[len(done):len(done) + 1]}): '
        f'{proc.stderr[-2000:]}')
    return {r[0]: r[1:] for r in rows}


def _check_refusals(rows, paths: Dict[str, str]) -> None:
    """Every file refused as unsafe (4) or malformed (3): which one may
    depend on the layer that refuses it first (the pickle pre-scan or the
    stand-ins, checked on their own below)."""
    marker = os.path.join(ROOT, 'PWNED')
    for name, path in paths.items():
        code, direct, stderr = rows[path]
        assert code in (3, 4) and direct in (3, 4), (name, code, direct,
                                                     stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith('error: ') and \
            path in lines[0], (name, stderr)
        assert 'Traceback' not in stderr
    assert not os.path.exists(marker)
    assert rows['poisoned'] == [[]]


def test_mmconv_reader_refuses_every_crafted_file(crafted, tmp_path):
    """mmconv's restricted zip reader (used before torch 2.6) and the .pkl
    reader: exit 4 (unsafe) or 3 (malformed), one line, no crash, nothing
    changed in the allowlisted classes."""
    paths = list(crafted['pth'].values()) + list(crafted['pkl'].values())
    rows = _run(tmp_path, 'mmconv', paths)
    _check_refusals(rows, crafted['pth'])
    _check_refusals(rows, crafted['pkl'])


@pytest.mark.skipif(not TORCH_WEIGHTS_ONLY_IS_SAFE,
                    reason='torch.load(weights_only=True) is the reader from '
                    'torch 2.6 on')
def test_torch_reader_refuses_every_crafted_file(crafted, tmp_path):
    """torch.load(weights_only=True) with mmconv's allowlist: the same."""
    rows = _run(tmp_path, 'torch', list(crafted['pth'].values()))
    _check_refusals(rows, crafted['pth'])


@pytest.mark.parametrize('layer', ['pkl', 'torch'])
def test_stand_ins_refuse_on_their_own(crafted, tmp_path, layer):
    """Without any pre-scan, the stand-ins alone refuse every crafted value
    (the .pkl unpickler; torch.load(weights_only=True) with mmconv's
    scoped allowlist): 4 for values numpy would accept but mmconv does not
    admit, 3 for inconsistent ones; no crash."""
    if layer == 'torch' and not TORCH_WEIGHTS_ONLY_IS_SAFE:
        pytest.skip('torch < 2.6 has no scoped safe globals')
    kind = 'pkl' if layer == 'pkl' else 'pth'
    rows = _run(tmp_path, f'layer-{layer}', list(crafted[kind].values()))
    for name, path in crafted[kind].items():
        assert rows[path][0] in _expected(name, kind), (name, rows[path])


def _legit_files(tmp_path) -> Dict[str, str]:
    """Real checkpoints with numpy values, argparse args, HistoryBuffers."""
    from mmengine.logging import MessageHub
    hub = MessageHub.get_instance(f'mmconv-allowlist-{tmp_path.name}')
    hub.update_scalar('train/loss', 1.25)
    values = {'arr': np.arange(6.).reshape(2, 3), 'best': np.float64(0.5),
              'step': np.int64(7), 'mask': np.array([True, False]),
              'big': np.arange(
                  3, dtype='>i4'), 'fortran': np.asfortranarray(
                      np.arange(6, dtype=np.float32).reshape(2, 3))}
    files = {}
    for name, obj in {
            'numpy': {'state_dict': {'w': torch.ones(2)}, **values},
            'args': {'model': {'w': torch.ones(2)},
                     'args': argparse.Namespace(lr=0.1, epochs=np.int64(3))},
            'mmengine': {'meta': {'epoch': 1}, 'state_dict': {
                'w': torch.ones(2)}, 'message_hub': hub.state_dict()}
    }.items():
        files[name] = str(tmp_path / f'{name}.pth')
        torch.save(obj, files[name])
    return files


def test_plain_torch_load_refuses_what_it_refuses_without_mmconv(
        crafted, tmp_path):
    """`import mmconv` (and mmconv's own loads in the same process) leaves
    torch's weights-only loader exactly as it was: the same files refused,
    the same process-wide safe globals."""
    files = _legit_files(tmp_path)
    paths = list(files.values()) + list(crafted['pth'].values())
    plain = _run(tmp_path, 'plain', paths)
    with_mmconv = _run(tmp_path, 'plain+mmconv', paths)
    assert plain == with_mmconv  # the same refusals, the same safe globals
    assert not [g for g in with_mmconv['safe_globals'][0] if 'mmconv' in g
                or 'numpy' in g or 'HistoryBuffer' in g or 'Namespace' in g]
    if TORCH_WEIGHTS_ONLY_IS_SAFE:  # numpy / HistoryBuffer: refused by torch
        assert with_mmconv[files['numpy']] == ['refused']
        assert with_mmconv[files['mmengine']] == ['refused']
        assert all(with_mmconv[p] == ['refused']
                   for p in crafted['pth'].values())


@pytest.mark.parametrize('reader', ['torch', 'mmconv'])
def test_real_values_load_as_real_objects(tmp_path, reader):
    """numpy arrays/scalars, args and HistoryBuffers load on both readers
    as usable numpy/argparse/MMEngine objects that pickle as the originals
    (no mmconv name in a re-saved file)."""
    if reader == 'torch' and not TORCH_WEIGHTS_ONLY_IS_SAFE:
        pytest.skip('torch < 2.6 has no scoped safe globals')
    from mmengine.logging import HistoryBuffer, MessageHub
    files = _legit_files(tmp_path)
    got = load_file(files['numpy'], reader=reader)
    src = torch.load(files['numpy'], weights_only=False)
    for key in ('arr', 'best', 'step', 'mask', 'big', 'fortran'):
        assert isinstance(got[key], type(src[key])), key
        assert np.array_equal(got[key], src[key]), key
        assert np.asarray(got[key]).dtype.newbyteorder('=') == \
            np.asarray(src[key]).dtype.newbyteorder('=')
    assert got['fortran'].flags.f_contiguous
    assert repr(got['arr']) == repr(src['arr'])
    assert (got['arr'] * 2).sum() == 30.0
    assert torch.equal(torch.from_numpy(got['arr']),
                       torch.from_numpy(src['arr']))
    args = load_file(files['args'], reader=reader)['args']
    assert isinstance(args, argparse.Namespace) and args.lr == 0.1
    assert args == argparse.Namespace(lr=0.1, epochs=3)
    hub = load_file(files['mmengine'], reader=reader)['message_hub']
    buf = hub['log_scalars']['train/loss']
    assert isinstance(buf, HistoryBuffer) and buf.current() == 1.25
    buf.update(2.75)
    assert buf.mean() == 2.0 and buf.statistics('max') == 2.75
    fresh = MessageHub.get_instance(f'mmconv-resumed-{tmp_path.name}')
    fresh.load_state_dict(hub)  # what MMEngine's resume does
    assert fresh.get_scalar('train/loss').current() == 2.75
    for obj in (got, args, buf):
        data = pickle.dumps(obj, 2)
        assert b'mmconv' not in data
        again = pickle.loads(data)
        assert type(again).__module__ != 'mmconv.allowlist'
    again = torch.load(io.BytesIO(_saved({'a': got['arr'], 'h': buf,
                                          'n': args})), weights_only=False)
    assert type(again['a']) is np.ndarray and type(again['n']) is \
        argparse.Namespace and type(again['h']) is HistoryBuffer


def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    assert b'mmconv' not in buf.getvalue()
    return buf.getvalue()


@pytest.mark.parametrize('proto', [2, 4, 5])
def test_pkl_reader_reads_numpy_pickles(tmp_path, proto):
    """detectron2-style .pkl files of every protocol (protocol 5 uses
    _frombuffer) load; arrays become tensors."""
    value = {'model': {'a': np.arange(6.).reshape(2, 3).T,
                       'b': np.arange(4, dtype=np.int64)},
             'step': np.int64(3), '__author__': 'me'}
    path = tmp_path / 'model.pkl'
    with open(path, 'wb') as f:
        pickle.dump(value, f, protocol=proto)
    got = load_file(str(path))
    for key, arr in value['model'].items():
        assert isinstance(got['model'][key], torch.Tensor), key
        assert np.array_equal(got['model'][key].numpy(), arr), key
    assert got['step'] == 3 and got['__author__'] == 'me'


def test_stand_ins_validate_directly():
    """The stand-ins themselves (no numpy object is ever admitted)."""
    for name in ('ndarray', 'dtype'):
        assert allowed_global('numpy', name) not in (np.ndarray, np.dtype)
    for module, name in [('numpy.dtypes', 'Float64DType'),
                         ('numpy.dtypes', 'ObjectDType'),
                         ('numpy.core.multiarray', '_reconstruct_x'),
                         ('numpy', 'frombuffer'), ('builtins', 'eval')]:
        assert allowed_global(module, name) is None, (module, name)
    assert allowed_global('builtins', 'getattr') is not getattr
    dtype_ = allowed_global('numpy', 'dtype')
    with pytest.raises(RefusedValue):
        dtype_('O8', False, True)
    with pytest.raises(RefusedValue):
        dtype_('float128', False, True)
    assert dtype_('float32').dtype == np.float32  # names numpy accepts
    with pytest.raises(RefusedValue):  # classes cannot be changed
        setattr(dtype_, '__setstate__', None)
    with pytest.raises(RefusedValue):
        setattr(Namespace, '__init__', None)
    encode = allowed_global('_codecs', 'encode')
    assert encode('\xff', 'latin1') == b'\xff'
    for bad in ('utf-16', 'rot13', 'no-such-codec'):
        with pytest.raises(RefusedValue):
            encode('abc', bad)
    with pytest.raises(MalformedValue):
        encode(b'abc', 'latin1')
    with pytest.raises(AttributeError):  # stand-in functions: no attributes
        setattr(encode, 'x', 1)


def test_restricted_unpickler_uses_stand_ins():
    """The .pkl reader resolves numpy's names to the stand-ins."""
    data = pickle.dumps({'a': np.arange(3), 's': np.float32(2.5),
                         'e': np.zeros((0, 3))}, 2)  # b'' as bytes()
    got = RestrictedUnpickler(io.BytesIO(data), encoding='latin1').load()
    assert np.array_equal(got['a'], np.arange(3)) and got['s'] == 2.5
    assert got['e'].shape == (0, 3) and got['e'].dtype == np.float64
    # numpy 2 spells the module numpy._core
    core2 = data.replace(b'numpy.core.multiarray', b'numpy._core.multiarray')
    assert core2 != data
    got = RestrictedUnpickler(io.BytesIO(core2), encoding='latin1').load()
    assert np.array_equal(got['a'], np.arange(3)) and got['s'] == 2.5
    # a dtype on its own: usable where numpy takes a dtype
    alone = RestrictedUnpickler(io.BytesIO(pickle.dumps(
        np.dtype('>f4'), 2))).load()
    assert alone == np.dtype('>f4') and np.dtype(alone) == np.dtype('>f4')
    assert np.zeros(2, alone).dtype == np.dtype('>f4')
    assert pickle.loads(pickle.dumps(alone)) == np.dtype('>f4')
    with pytest.raises(RefusedValue):
        RestrictedUnpickler(io.BytesIO(pickle.dumps(
            np.dtype('O'), 2))).load()


@pytest.mark.skipif(not hasattr(torch.serialization, 'safe_globals'),
                    reason='scoped safe globals exist from torch 2.5')
def test_safe_globals_context_is_scoped():
    """Inside: exactly mmconv's entries (others' set aside); after: what
    was there before, and none of mmconv's."""
    ser = torch.serialization

    class Theirs:
        pass

    original = ser.get_safe_globals()
    ser.add_safe_globals([Theirs, (np.dtype, 'numpy.dtype')])
    try:
        before = ser.get_safe_globals()
        with safe_globals_context():
            inside = ser.get_safe_globals()
            assert Theirs not in inside
            assert (np.dtype, 'numpy.dtype') not in inside
            assert set(map(id, (o for o, _ in SAFE_GLOBALS))) <= \
                set(id(e[0] if isinstance(e, tuple) else e) for e in inside)
        assert sorted(map(repr, ser.get_safe_globals())) == \
            sorted(map(repr, before))
    finally:
        ser.clear_safe_globals()
        ser.add_safe_globals(original)
