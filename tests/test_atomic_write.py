# Copyright (c) mmconv contributors. All rights reserved.
"""Killing the converter mid-write never leaves a truncated destination."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'tools', 'model_converters', 'selfsup2mmdet.py')


@pytest.fixture(scope='module')
def big_source(module_tmp_path):
    """A ~300 MB MMDetection-layout checkpoint (slow enough to write)."""
    path = module_tmp_path / 'big.pth'
    torch.manual_seed(0)
    sd = {'conv1.weight': torch.randn(64, 3, 7, 7)}
    sd.update({f'layer1.{i}.conv1.weight': torch.randn(1024, 1024, 3, 3)
               for i in range(8)})
    torch.save({'state_dict': sd}, path)
    return path


def _size(path):
    """Size of ``path``; 0 once gone (the destination check's probe file
    lives for microseconds)."""
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def _kill_while_writing(src, dst, extra=()):
    """Start the CLI, SIGKILL it once its temporary file has grown."""
    proc = subprocess.Popen([sys.executable, SCRIPT, str(src), str(dst)] +
                            list(extra), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    parent = os.path.dirname(str(dst))
    prefix = f'.{os.path.basename(str(dst))}.'
    deadline = time.time() + 120
    killed_mid_write = False
    while time.time() < deadline and proc.poll() is None:
        if any(_size(os.path.join(parent, f)) > 2**20
               for f in os.listdir(parent) if f.startswith(prefix)):
            proc.send_signal(signal.SIGKILL)
            killed_mid_write = True
            break
        time.sleep(0.005)
    proc.wait()
    return killed_mid_write


@pytest.mark.slow
def test_sigkill_mid_write_keeps_old_destination(big_source, tmp_path):
    """--force over an existing file, killed mid-write: the old bytes stay;
    only a `.DST.*.part` temporary is left behind, never DST itself."""
    dst = tmp_path / 'out.pth'
    dst.write_bytes(b'previous checkpoint')
    assert _kill_while_writing(big_source, dst, ['--force'])
    assert dst.read_bytes() == b'previous checkpoint'
    leftovers = [f for f in os.listdir(tmp_path) if f != 'out.pth']
    assert all(f.startswith('.out.pth.') and f.endswith('.part')
               for f in leftovers)


@pytest.mark.slow
def test_sigkill_mid_write_leaves_no_destination(big_source, tmp_path):
    """No previous file, killed mid-write: DST does not exist."""
    dst = tmp_path / 'new.pth'
    assert _kill_while_writing(big_source, dst)
    assert not dst.exists()
    # a later run succeeds and its output is complete
    proc = subprocess.run([sys.executable, SCRIPT, str(big_source),
                           str(dst)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = torch.load(dst, mmap=True)
    assert len(out['state_dict']) == 9


@pytest.mark.parametrize('umask', [0o022, 0o077])
def test_output_mode_is_what_open_would_give(tmp_path, umask):
    """The atomic write's temporary file is created 0600; the published
    checkpoint has the mode a plain open() gives under the umask."""
    from mmconv.writing import save_file
    old = os.umask(umask)
    try:
        final, _ = save_file({'state_dict': {'w': torch.zeros(2)}},
                               str(tmp_path / 'out.pth'))
        plain = tmp_path / 'plain'
        plain.write_bytes(b'')
    finally:
        os.umask(old)
    mode = os.stat(final).st_mode & 0o777
    assert mode == os.stat(plain).st_mode & 0o777 == 0o666 & ~umask
