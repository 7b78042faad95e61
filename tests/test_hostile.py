# Copyright (c) mmconv contributors. All rights reserved.
"""Broken and hostile files end with a one-line error and exit 3 or 4, in
bounded time and memory, on both torch read paths, and nothing from them
runs or changes the process (tests/fixtures/hostile.py makes the corpus)."""
import argparse
import importlib.util
import json
import os
import pickle
import resource
import subprocess
import sys

import numpy as np
import pytest
import torch

from mmconv import InputError, load_file, picklescan
from mmconv.allowlist import allowed_global
from mmconv.reading import TORCH_WEIGHTS_ONLY_IS_SAFE, _pickle_rules
from mmconv.torchzip import check_torch_zip
from tests.fixtures import hostile
from tests.fixtures.hostile import CLI_CLASSES, build_corpus
from tests.helpers.tiers import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the read paths of this torch: torch.load(weights_only) only where it is
#: a safety boundary; mmconv's own reader everywhere
READERS = ['torch', 'mmconv'] if TORCH_WEIGHTS_ONLY_IS_SAFE else ['mmconv']
AUTO = READERS[0]
#: address space for the data segment of every process that reads the
#: corpus: an allocation of a declared size fails instead of swapping
DATA_LIMIT = 4 << 30


def _limit_memory() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard == resource.RLIM_INFINITY or hard > DATA_LIMIT:
        resource.setrlimit(resource.RLIMIT_DATA, (DATA_LIMIT, hard))


def _env() -> dict:
    """This checkout first on the path (a venv may hold an installed
    copy of mmconv)."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in [os.environ.get('PYTHONPATH')] if p]))


def _available(case: hostile.Case) -> bool:
    return not case.needs or importlib.util.find_spec(case.needs) is not None


@pytest.fixture(scope='module')
def corpus(module_tmp_path):
    """``(marker, [(case, path)])``: every case written to a file."""
    marker = module_tmp_path / 'PWNED'
    out = []
    for case in build_corpus(str(marker)):
        if _available(case):
            path = module_tmp_path / case.filename
            path.write_bytes(case.data)
            out.append((case, str(path)))
    return marker, out


#: Runs ``mmconv inspect`` on each (path, reader) of a JSON list, in this
#: one process, forcing the reader 'auto' picks; prints one JSON line per
#: run (a 'start' line first, so a hang names its file), then whether
#: anything the files could BUILD on changed, and the peak memory.
DRIVER = r'''
import argparse, collections, contextlib, io, json, resource, sys
import traceback, warnings
soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
resource.setrlimit(resource.RLIMIT_DATA, (int(sys.argv[2]), hard))
import numpy as np
try:  # what HistoryBuffer cases would change (imported by them otherwise)
    import mmengine.logging
except ImportError:
    pass
import mmconv.reading as reading
from mmconv import allowlist
from mmconv.cli import main


def state():
    """What a BUILD on a class or function would change, process-wide."""
    found = [vars(argparse.Namespace), vars(allowlist.Namespace),
             vars(collections.OrderedDict),
             vars(allowlist.exclude_bias_and_norm),
             allowlist.exclude_bias_and_norm.__defaults__,
             np.dtype('f4').str, np.dtype('f8').str]
    if 'mmengine.logging' in sys.modules:
        from mmengine.logging import HistoryBuffer
        found += [vars(HistoryBuffer), dict(HistoryBuffer._statistics_methods)]
    return repr([sorted((k, id(v)) for k, v in d.items())
                 if isinstance(d, (dict, type(vars(int)))) else d
                 for d in found])


before = state()
for path, reader in json.load(open(sys.argv[1])):
    print(json.dumps(['start', path, reader]), flush=True)
    reading.TORCH_WEIGHTS_ONLY_IS_SAFE = reader == 'torch'
    err, trace, code = io.StringIO(), None, None
    with contextlib.redirect_stderr(err), \
            contextlib.redirect_stdout(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter('ignore')
        try:
            code = main(['inspect', path])
        except BaseException:
            trace = traceback.format_exc()
    print(json.dumps(['done', path, reader, code, err.getvalue(), trace]),
          flush=True)
print(json.dumps(['end', state() == before,
                  resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]))
'''


def test_every_case_on_every_reader(corpus, module_tmp_path):
    """Each file, on each read path of this torch: the exact exit code, one
    error line naming the file, no traceback, no hang (one process for the
    whole corpus, under a time limit), no allocation of a declared size
    (the data segment is limited), no payload run, no class or function
    changed."""
    marker, files = corpus
    runs = [(path, reader) for _, path in files for reader in READERS]
    listing = module_tmp_path / 'runs.json'
    listing.write_text(json.dumps(runs))
    try:
        proc = subprocess.run(
            [sys.executable, '-c', DRIVER, str(listing), str(DATA_LIMIT)],
            capture_output=True, text=True, timeout=300, env=_env(),
            cwd=str(module_tmp_path))
    except subprocess.TimeoutExpired as err:
        lines = (err.stdout or b'').decode().splitlines() \
            if isinstance(err.stdout, bytes) else (err.stdout or '')
        started = [json.loads(ln) for ln in lines if '"start"' in ln]
        pytest.fail(f'hangs on {started[-1] if started else "start-up"}')
    lines = [json.loads(ln) for ln in proc.stdout.splitlines()
             if ln.startswith('[')]
    assert lines and lines[-1][0] == 'end', proc.stderr[-3000:]
    results = {(ln[1], ln[2]): ln[3:] for ln in lines if ln[0] == 'done'}
    assert len(results) == len(runs)
    failures = []
    for case, path in files:
        for reader in READERS:
            code, err, trace = results[(path, reader)]
            lines_ = err.strip().splitlines()
            if code != case.expected(reader) or trace or \
                    len(lines_) != 1 or not lines_[0].startswith('error: ') \
                    or path not in lines_[0] or 'not enough memory' in err:
                failures.append(f'{case.name} [{reader}]: exit {code} '
                                f'(want {case.expected(reader)}) '
                                f'{(trace or err).strip()[-300:]}')
    assert not failures, '\n'.join(failures)
    assert lines[-1][1], 'a file changed a class or function'
    assert not marker.exists()


# every class runs in the fast tier in one process: the test above
@pytest.mark.parametrize('cls', sweep(CLI_CLASSES, ()))
def test_command_line_per_class(cls, tmp_path):
    """One real ``mmconv inspect`` process per class: its exit code, one
    'error:' line naming the file on stderr, nothing else."""
    marker = tmp_path / 'PWNED'
    case = next((c for c in build_corpus(str(marker), (cls, ))
                 if _available(c)), None)
    if case is None:
        pytest.skip(f'no {cls} case runs here')
    path = tmp_path / case.filename
    path.write_bytes(case.data)
    proc = subprocess.run(
        [sys.executable, '-m', 'mmconv', 'inspect', str(path)],
        capture_output=True, text=True, timeout=120, env=_env(),
        preexec_fn=_limit_memory)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == case.expected(AUTO), proc.stderr
    assert len(lines) == 1 and lines[0].startswith('error: ') and \
        str(path) in lines[0], proc.stderr
    assert not marker.exists()


def test_special_files_are_refused(tmp_path):
    """A FIFO or a device named like a checkpoint: an input error at once,
    never opened (reading it would block or never end)."""
    fifo = tmp_path / 'pipe.pth'
    os.mkfifo(fifo)
    link = tmp_path / 'zero.pkl'
    link.symlink_to('/dev/zero')
    for path in (fifo, link):
        with pytest.raises(InputError, match='not a regular file'):
            load_file(str(path))


# ---------------------------------------------------------------- limits --
def _scan(data: bytes) -> picklescan.Scan:
    return picklescan.scan_pickle(data, _pickle_rules())


def _nested(depth: int) -> bytes:
    return b'\x80\x02' + b']' * depth + b'a' * (depth - 1) + b'.'


def test_limits_are_exact():
    """Each limit admits its own value and refuses one more."""
    limit = picklescan.MAX_DEPTH
    assert _scan(_nested(limit)).depth == limit
    with pytest.raises(picklescan.PickleRejected, match='nested'):
        _scan(_nested(limit + 1))
    key = picklescan.MAX_KEY_NODES - 1  # a tuple of n Nones: n + 1 nodes
    ok = b'\x80\x02}(' + b'(' + b'N' * key + b'tNu.'
    assert _scan(ok).unfolded == 1 + key + 1 + 1
    with pytest.raises(picklescan.PickleRejected, match='dict key'):
        _scan(ok.replace(b'N' * key, b'N' * (key + 1)))
    memo = picklescan.MAX_MEMO
    _scan(b'\x80\x02Nr' + (memo - 1).to_bytes(4, 'little') + b'.')
    with pytest.raises(picklescan.PickleRejected, match='memo'):
        _scan(b'\x80\x02Nr' + memo.to_bytes(4, 'little') + b'.')
    big = picklescan.MAX_INT_BYTES
    _scan(b'\x80\x02\x8b' + big.to_bytes(4, 'little') + b'\x01' * big + b'.')
    with pytest.raises(picklescan.PickleRejected, match='integer'):
        _scan(b'\x80\x02\x8b' + (big + 1).to_bytes(4, 'little') +
              b'\x01' * (big + 1) + b'.')


def test_size_limits_count_the_final_graph(monkeypatch):
    """Opcodes and unfolded nodes (lowered here to keep the files small):
    the unfolded size counts a list filled after it was referenced."""
    monkeypatch.setattr(picklescan, 'MAX_UNFOLDED', 1000)
    monkeypatch.setattr(picklescan, 'MAX_OPCODES', 5000)
    shared = b']r\x00\x00\x00\x00('  # [] memoized, then filled by APPENDS
    ok = b'\x80\x02' + shared + b'N' * 998 + b'e.'
    assert _scan(ok).unfolded == 999
    # referenced 10 times before it is filled: 10 x 100 nodes + 1 + 1
    late = b'\x80\x02]r\x00\x00\x00\x000](' + \
        b'j\x00\x00\x00\x00' * 10 + b'ej\x00\x00\x00\x00(' + b'N' * 99 + \
        b'e0.'
    with pytest.raises(picklescan.PickleRejected, match='unfolds'):
        _scan(late)
    with pytest.raises(picklescan.PickleRejected, match='opcodes'):
        _scan(b'\x80\x02' + b'N0' * 2500 + b'N.')


def _realistic_checkpoint(n_params: int):
    """A training checkpoint the size of a 7B-parameter LLaMA's layout
    (here with tiny tensors: the pickle depends on their count, not their
    size): model state dict, AdamW state, args, MMEngine message hub."""
    torch.manual_seed(0)
    sd = {f'layers.{i // 9}.w{i % 9}.weight': torch.randn(2, 2)
          for i in range(n_params)}
    state = {i: {'step': torch.tensor(10.), 'exp_avg': torch.randn(2, 2),
                 'exp_avg_sq': torch.rand(2, 2)} for i in range(n_params)}
    groups = [{'params': list(range(n_params)), 'lr': 3e-4, 'betas':
               (0.9, 0.95), 'eps': 1e-8, 'weight_decay': 0.1,
               'amsgrad': False, 'foreach': None, 'maximize': False}]
    args = argparse.Namespace(**{f'opt{i}': [i, str(i), {'x': i * 0.5}]
                                 for i in range(300)})
    ckpt = {'meta': {'epoch': 3, 'iter': 30000, 'seed': 42,
                     'env_info': 'x' * 5000},
            'state_dict': sd,
            'optimizer': {'state': state, 'param_groups': groups},
            'args': args, 'best': np.float64(0.25),
            'rng': np.random.RandomState(0).get_state()[1]}
    if importlib.util.find_spec('mmengine') is not None:
        from mmengine.logging import MessageHub
        hub = MessageHub.get_instance('mmconv-hostile-realistic')
        for step in range(2000):
            for key in ('loss', 'lr', 'grad_norm', 'data_time', 'time'):
                hub.update_scalar(f'train/{key}', float(step))
        hub.update_info('iter', 30000)
        ckpt['message_hub'] = hub.state_dict()
    return ckpt


def test_real_checkpoints_stay_far_below_the_limits(tmp_path):
    """A 7B-parameter model's checkpoint layout (291 tensors; here 1000)
    with optimizer state, args and message hub reads on every path, and
    uses a small fraction of each limit."""
    path = tmp_path / 'big.pth'
    ckpt = _realistic_checkpoint(1000)
    torch.save(ckpt, path)
    for reader in READERS:
        got = load_file(str(path), reader=reader)
        assert set(got['state_dict']) == set(ckpt['state_dict'])
        assert torch.equal(got['optimizer']['state'][999]['exp_avg'],
                           ckpt['optimizer']['state'][999]['exp_avg'])
        assert got['args'].opt299 == ckpt['args'].opt299
    _, _, scan = check_torch_zip(str(path), allowed_global)
    assert scan.opcodes * 20 < picklescan.MAX_OPCODES
    assert scan.unfolded * 20 < picklescan.MAX_UNFOLDED
    assert scan.depth * 5 < picklescan.MAX_DEPTH
    assert len(scan.storages) == 1000 * 4
    # the same as a .pkl (numpy arrays, as detectron2 writes them)
    pkl = tmp_path / 'big.pkl'
    arrays = {k: v.numpy() for k, v in ckpt['state_dict'].items()}
    with open(pkl, 'wb') as f:
        pickle.dump({'model': arrays, '__author__': 'x',
                     'blob': np.zeros(1 << 22, np.float32)}, f, protocol=2)
    got = load_file(str(pkl))
    assert set(got['model']) == set(arrays)
    with open(pkl, 'rb') as f:
        scan = _scan(f.read())
    assert scan.unfolded * 20 < picklescan.MAX_UNFOLDED


@pytest.mark.slow
def test_every_registered_source_passes_the_prescan(tmp_path):
    """Every source checkpoint of tests/fixtures/sources.py (one per
    registered format) passes the checks both torch read paths run
    first."""
    from tests.fixtures.official_layouts import official_pickle_globals
    from tests.fixtures.sources import SOURCES
    path = tmp_path / 'src.pth'
    skipped = []
    for fmt, build in SOURCES.items():
        try:
            source = build()
        except ModuleNotFoundError as err:
            skipped.append(f'{fmt} ({err.name})')
            continue
        with official_pickle_globals():
            torch.save(source.checkpoint, path)
        check_torch_zip(str(path), allowed_global)
    assert len(skipped) < len(SOURCES), skipped
