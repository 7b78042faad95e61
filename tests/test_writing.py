# Copyright (c) mmconv contributors. All rights reserved.
"""Destinations that must not or cannot be written, and racing writers.

Every refusal and every OS error on write is exit 6 with one ``error:``
line and no traceback, and leaves no temporary file; a destination that is
not a regular file is never replaced, and without ``--force`` a destination
that appears while converting is kept.
"""
import contextlib
import ctypes
import errno
import os
import re
import stat
import subprocess
import sys
import threading

import pytest
import torch

import mmconv.writing as writing
from mmconv.cli import main
from mmconv.errors import OutputError
from mmconv.writing import check_destination, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IS_ROOT = hasattr(os, 'geteuid') and os.geteuid() == 0


@pytest.fixture(scope='module')
def r18(module_tmp_path):
    """A torchvision ResNet-18 state dict (random weights), torch.save'd."""
    import torchvision
    torch.manual_seed(0)
    path = module_tmp_path / 'r18.pth'
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def _convert(capsys, src, dst, *extra):
    """``mmconv convert SRC DST ...`` in-process: (exit code, stderr)."""
    capsys.readouterr()
    code = main(['convert', str(src), str(dst), *map(str, extra)])
    return code, capsys.readouterr().err


def _assert_exit6(code, err, pattern=None):
    """Exit 6, one ``error:`` line, no traceback."""
    lines = err.strip().splitlines()
    assert code == 6, err
    assert len(lines) == 1 and lines[0].startswith('error: '), err
    assert 'Traceback' not in err
    if pattern:
        assert re.search(pattern, lines[0]), lines[0]


def _parts(directory):
    """Temporary files of the atomic writer left in ``directory``."""
    return [f for f in os.listdir(directory) if f.endswith('.part')]


def _load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def _same_checkpoint(a, b):
    """Both outputs hold the same tensors and meta."""
    a, b = _load(a), _load(b)
    assert a['meta'] == b['meta']
    assert a['state_dict'].keys() == b['state_dict'].keys()
    assert all(torch.equal(a['state_dict'][k], b['state_dict'][k])
               for k in a['state_dict'])


# ------------------------------------------------------- special files ---


@pytest.mark.parametrize('force', [False, True])
def test_fifo_is_never_replaced(r18, tmp_path, capsys, force):
    dst = tmp_path / 'out.pth'
    os.mkfifo(dst)
    code, err = _convert(capsys, r18, dst, *(['--force'] if force else []))
    _assert_exit6(code, err, 'is a FIFO, not a regular file')
    assert stat.S_ISFIFO(os.lstat(dst).st_mode)
    assert _parts(tmp_path) == []


@pytest.mark.skipif(not os.path.exists('/dev/null'), reason='no /dev/null')
def test_dev_null_is_never_replaced(r18, capsys):
    """As root, a plain rename would replace /dev/null with a file."""
    before = os.lstat('/dev/null')
    assert stat.S_ISCHR(before.st_mode)
    try:
        code, err = _convert(capsys, r18, '/dev/null', '--force')
        after = os.lstat('/dev/null')
    finally:  # a regression must not leave the machine without /dev/null
        if not stat.S_ISCHR(os.lstat('/dev/null').st_mode):
            os.unlink('/dev/null')
            os.mknod('/dev/null', before.st_mode, before.st_rdev)
            os.chmod('/dev/null', stat.S_IMODE(before.st_mode))
            os.chown('/dev/null', before.st_uid, before.st_gid)
    _assert_exit6(code, err, 'is a character device')
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev
    assert after.st_ino == before.st_ino
    assert not any(f.startswith('.null.') for f in os.listdir('/dev'))


@pytest.mark.skipif(not IS_ROOT, reason='mknod needs root')
def test_device_node_is_never_replaced(r18, tmp_path, capsys):
    dst = tmp_path / 'out.pth'
    os.mknod(dst, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    code, err = _convert(capsys, r18, dst, '--force')
    _assert_exit6(code, err, 'is a character device')
    assert stat.S_ISCHR(os.lstat(dst).st_mode)
    assert _parts(tmp_path) == []


@pytest.mark.parametrize('link', [False, True])
def test_directory_is_refused(r18, tmp_path, capsys, link):
    target = tmp_path / 'dir'
    target.mkdir()
    dst = tmp_path / 'link' if link else target
    if link:
        dst.symlink_to(target)
    code, err = _convert(capsys, r18, dst, '--force')
    _assert_exit6(code, err, 'is a directory')
    assert os.path.isdir(dst) and os.path.islink(dst) == link
    assert os.listdir(target) == [] and _parts(tmp_path) == []


def test_symlink_counts_as_existing_and_force_replaces_the_link(
        r18, tmp_path, capsys):
    """A symlinked DST is an existing DST; --force replaces the link
    itself, never the file (or device) it points to."""
    target = tmp_path / 'target.pth'
    target.write_bytes(b'target')
    dst = tmp_path / 'out.pth'
    dst.symlink_to(target)
    code, err = _convert(capsys, r18, dst)
    _assert_exit6(code, err, 'already exists .a symbolic link.; pass --force')
    assert os.path.islink(dst) and target.read_bytes() == b'target'
    assert _convert(capsys, r18, dst, '--force')[0] == 0
    assert not os.path.islink(dst) and stat.S_ISREG(os.lstat(dst).st_mode)
    assert target.read_bytes() == b'target'
    assert set(_load(dst)['state_dict'])
    # a link to a device: the link is replaced, the device untouched
    null = tmp_path / 'null.pth'
    null.symlink_to('/dev/null')
    assert _convert(capsys, r18, null, '--force')[0] == 0
    assert stat.S_ISREG(os.lstat(null).st_mode)
    assert stat.S_ISCHR(os.lstat('/dev/null').st_mode)
    # a dangling link exists too
    dangling = tmp_path / 'dangling.pth'
    dangling.symlink_to(tmp_path / 'nowhere')
    _assert_exit6(*_convert(capsys, r18, dangling), 'already exists')
    assert os.path.islink(dangling) and not (tmp_path / 'nowhere').exists()
    assert _parts(tmp_path) == []


# ---------------------------------------------------- real OS failures ---


def test_name_too_long(r18, tmp_path, capsys):
    dst = tmp_path / ('a' * 300 + '.pth')
    code, err = _convert(capsys, r18, dst)
    _assert_exit6(code, err, 'too long; choose a shorter name')
    assert os.listdir(tmp_path) == []


def test_longest_name_is_written(tmp_path):
    """A DST name at the file system's limit works: the temporary file's
    name is shortened to fit."""
    name_max = os.pathconf(tmp_path, 'PC_NAME_MAX')
    dst = tmp_path / ('b' * (name_max - 4) + '.pth')
    final, _ = save_file({'state_dict': {'w': torch.ones(3)}}, str(dst))
    assert final == str(dst) and os.listdir(tmp_path) == [dst.name]
    assert torch.equal(_load(dst)['state_dict']['w'], torch.ones(3))


def test_parent_missing(r18, tmp_path, capsys):
    code, err = _convert(capsys, r18, tmp_path / 'nope' / 'out.pth')
    _assert_exit6(code, err, 'does not exist; create it first')
    assert os.listdir(tmp_path) == []
    (tmp_path / 'file').write_bytes(b'')
    code, err = _convert(capsys, r18, tmp_path / 'file' / 'out.pth')
    _assert_exit6(code, err, 'not a directory')


@pytest.mark.parametrize('parent', ['/proc', '/sys'])
def test_pseudo_file_systems(r18, capsys, parent):
    if not os.path.isdir(parent):
        pytest.skip(f'no {parent}')
    dst = os.path.join(parent, 'mmconv_test.pth')
    code, err = _convert(capsys, r18, dst)
    _assert_exit6(code, err, f'{dst}: ')
    assert not os.path.lexists(dst)
    assert not any(f.startswith('.mmconv_test.pth.')
                   for f in os.listdir(parent))


@contextlib.contextmanager
def _tmpfs(path, options):
    """A tmpfs mounted at ``path`` (skips the test where mount is denied)."""
    path.mkdir()
    proc = subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs',
                           str(path)], capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f'cannot mount a tmpfs: {proc.stderr.strip()}')
    try:
        yield path
    finally:
        if subprocess.run(['umount', str(path)]).returncode:
            subprocess.run(['umount', '-l', str(path)], check=True)


@pytest.mark.parametrize('extra', [(), ('--publish', ), ('--out-format',
                                                          'safetensors')])
def test_real_full_disk(r18, tmp_path, capsys, extra):
    """A 2 MiB tmpfs: torch's writer reports ENOSPC as a RuntimeError."""
    with _tmpfs(tmp_path / 'mnt', 'size=2m') as mnt:
        dst = mnt / 'out.pth'
        code, err = _convert(capsys, r18, dst, *extra)
        _assert_exit6(code, err, f'{dst}: no space left on the device')
        assert os.listdir(mnt) == []
        dst.write_bytes(b'old')
        code, err = _convert(capsys, r18, dst, '--force', *extra)
        _assert_exit6(code, err, 'no space left')
        assert os.listdir(mnt) == ['out.pth'] and dst.read_bytes() == b'old'


def test_real_read_only_file_system(r18, tmp_path, capsys):
    with _tmpfs(tmp_path / 'mnt', 'ro,size=1m') as mnt:
        code, err = _convert(capsys, r18, mnt / 'out.pth')
        _assert_exit6(code, err, 'read-only file system; write elsewhere')
        assert os.listdir(mnt) == []


# ------------------------------------------------ simulated OS failures ---

#: errno -> what the error line says
PHRASES = {'ENOSPC': 'no space left on the device',
           'EROFS': 'is on a read-only file system',
           'EACCES': 'permission denied creating files in',
           'ENAMETOOLONG': 'too long', 'EIO': r'cannot write \(',
           'EDQUOT': 'quota exceeded'}


def _fail(monkeypatch, directory, code, stage):
    """Make the OS fail with ``code`` when mmconv writes in ``directory``.

    Stages: ``create`` (the temporary file cannot be created: also the
    early probe, before converting), ``write`` (torch's writer fails as it
    does on a full disk, a RuntimeError without errno, and the OS reports
    ``code`` on the next write/fsync), ``place`` (the final link/rename).
    """
    directory = str(directory)

    def error(path=directory):
        return OSError(code, os.strerror(code), path)

    def ours(path):
        return os.path.dirname(os.path.abspath(os.fspath(path))) == directory

    if stage == 'create':
        real_open = os.open

        def fake_open(path, flags, *args, **kwargs):
            if flags & os.O_CREAT and ours(path):
                raise error(path)
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, 'open', fake_open)
    elif stage == 'write':
        def fake_save(obj, f, *args, **kwargs):
            with open(f, 'ab') as out:  # torch's writer got this far
                out.write(b'x' * 1000)
            raise RuntimeError('[enforce fail at inline_container.cc:672] . '
                               'unexpected pos 576 vs 534')

        def fake_fsync(fd):
            raise error()

        monkeypatch.setattr(writing.torch, 'save', fake_save)
        monkeypatch.setattr(os, 'fsync', fake_fsync)
    else:
        for name in ('link', 'replace'):
            real = getattr(os, name)

            def fake_place(src, dst, *args, _real=real, **kwargs):
                if ours(dst):
                    raise error(dst)
                return _real(src, dst, *args, **kwargs)

            monkeypatch.setattr(os, name, fake_place)


@pytest.mark.parametrize('name,stage', [
    ('ENOSPC', 'create'), ('ENOSPC', 'write'), ('ENOSPC', 'place'),
    ('EROFS', 'create'), ('EROFS', 'write'), ('EROFS', 'place'),
    ('EACCES', 'create'), ('EACCES', 'place'), ('EDQUOT', 'write'),
    ('ENAMETOOLONG', 'place'), ('EIO', 'write')])
@pytest.mark.parametrize('force', [False, True])
def test_os_errors_are_exit_6(r18, tmp_path, capsys, monkeypatch, name,
                              stage, force):
    """No DST (or the old one with --force), no temporary file."""
    code = getattr(errno, name)
    out = tmp_path / 'out'
    out.mkdir()
    dst = out / 'dst.pth'
    if force:
        dst.write_bytes(b'old')
    if name == 'EACCES':
        out.chmod(0o500)  # what a user sees; root bypasses it: simulated
    try:
        if name != 'EACCES' or IS_ROOT:
            _fail(monkeypatch, out, code, stage)
        rc, err = _convert(capsys, r18, dst, *(['--force'] if force else []))
        monkeypatch.undo()
    finally:
        out.chmod(0o700)
    _assert_exit6(rc, err, f'{dst}: .*{PHRASES[name]}')
    assert os.listdir(out) == (['dst.pth'] if force else [])
    if force:
        assert dst.read_bytes() == b'old'


def test_torch_bug_is_not_an_output_error(tmp_path, monkeypatch):
    """Only torch's failed *writes* become exit 6; any other RuntimeError
    keeps its traceback (a bug), and the temporary file still goes."""
    def broken(obj, f, *args, **kwargs):
        raise RuntimeError('some tensor bug')

    monkeypatch.setattr(writing.torch, 'save', broken)
    with pytest.raises(RuntimeError, match='some tensor bug'):
        save_file({'state_dict': {'w': torch.ones(1)}},
                  str(tmp_path / 'out.pth'))
    assert os.listdir(tmp_path) == []


# -------------------------------------- no replace at the final step ---


def _renameat2_available():
    try:
        return sys.platform.startswith('linux') and \
            hasattr(ctypes.CDLL(None), 'renameat2')
    except OSError:
        return False


@pytest.fixture(params=['link', 'renameat2', 'o_excl'])
def placement(request, monkeypatch):
    """The three ways of the final no-replace step: hard link; then, on
    file systems without hard links, renameat2(RENAME_NOREPLACE); then an
    O_EXCL placeholder renamed over."""
    if request.param == 'link':
        yield request.param
        return
    if request.param == 'renameat2' and not _renameat2_available():
        pytest.skip('no renameat2 in libc')

    def no_links(src, dst, *args, **kwargs):
        raise OSError(errno.EPERM, 'Operation not permitted', dst)

    monkeypatch.setattr(os, 'link', no_links)
    calls = []
    real = writing._renameat2_noreplace

    def renameat2(old, new):
        calls.append(new)
        return False if request.param == 'o_excl' else real(old, new)

    monkeypatch.setattr(writing, '_renameat2_noreplace', renameat2)
    yield request.param
    assert calls  # the fallback was really taken


def _intruder(monkeypatch, data=b'other writer'):
    """Create the final name just before mmconv puts its file there."""
    real = writing._place

    def place(tmp, final, force):
        with open(final, 'wb') as f:
            f.write(data)
        return real(tmp, final, force)

    monkeypatch.setattr(writing, '_place', place)


@pytest.mark.parametrize('publish', [False, True])
def test_dst_appearing_meanwhile_is_kept(tmp_path, monkeypatch, placement,
                                         publish):
    """Checked free at the start, taken while writing: the other file
    stays, mmconv fails with exit 6 and removes its temporary file (also
    for the ``--publish`` name)."""
    dst = tmp_path / 'out.pth'
    _intruder(monkeypatch)
    with pytest.raises(OutputError, match='appeared while converting') as e:
        save_file({'state_dict': {'w': torch.ones(3)}}, str(dst),
                  publish=publish)
    assert e.value.exit_code == 6
    [name] = os.listdir(tmp_path)
    assert (tmp_path / name).read_bytes() == b'other writer'
    assert (name.startswith('out-') if publish else name == 'out.pth')


def test_force_replaces_what_appeared_meanwhile(tmp_path, monkeypatch):
    dst = tmp_path / 'out.pth'
    _intruder(monkeypatch)
    save_file({'state_dict': {'w': torch.ones(3)}}, str(dst), force=True)
    assert torch.equal(_load(dst)['state_dict']['w'], torch.ones(3))
    assert os.listdir(tmp_path) == ['out.pth']


def test_force_refuses_a_fifo_appearing_meanwhile(tmp_path, monkeypatch):
    dst = tmp_path / 'out.pth'
    real = writing._place
    monkeypatch.setattr(writing, '_place', lambda tmp, final, force: (
        os.mkfifo(final), real(tmp, final, force)))
    with pytest.raises(OutputError, match='is a FIFO'):
        save_file({'state_dict': {'w': torch.ones(3)}}, str(dst), force=True)
    assert os.listdir(tmp_path) == ['out.pth']
    assert stat.S_ISFIFO(os.lstat(dst).st_mode)


def test_publish_name_is_not_replaced(tmp_path):
    """The sha-suffixed name exists already: refused without --force."""
    obj = {'state_dict': {'w': torch.ones(3)}}
    first, sha = save_file(obj, str(tmp_path / 'pub.pth'), publish=True)
    with pytest.raises(OutputError, match='already exists'):
        save_file(obj, str(tmp_path / 'pub.pth'), publish=True)
    again, sha2 = save_file(obj, str(tmp_path / 'pub.pth'), publish=True,
                            force=True)
    assert (again, sha2) == (first, sha)
    assert os.listdir(tmp_path) == [os.path.basename(first)]


def _race(dst, n, force, barrier_timeout=60):
    """``n`` threads write different tensors to ``dst``, all reaching the
    final step together; returns {i: final path or OutputError}."""
    barrier = threading.Barrier(n, timeout=barrier_timeout)
    real = writing._place
    results = {}

    def place(tmp, final, force_):
        barrier.wait()
        return real(tmp, final, force_)

    def writer(i):
        try:
            results[i] = save_file(
                {'state_dict': {'w': torch.full((256, ), float(i))}},
                str(dst), force=force)[0]
        except OutputError as err:
            results[i] = err

    writing_place, writing._place = writing._place, place
    try:
        threads = [threading.Thread(target=writer, args=(i, ))
                   for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(barrier_timeout * 2)
    finally:
        writing._place = writing_place
    assert len(results) == n
    return results


def test_racing_writers(tmp_path, placement):
    """Four writers passed every check and reach the final step at once:
    exactly one wins and DST is its file."""
    _check_race(tmp_path, force=False)


def test_racing_writers_with_force(tmp_path):
    """With --force all succeed (the last rename wins) and DST is one
    complete file of one of them."""
    _check_race(tmp_path, force=True)


def _check_race(tmp_path, force):
    dst = tmp_path / 'out.pth'
    results = _race(dst, 4, force)
    won = [i for i, r in results.items() if not isinstance(r, Exception)]
    if force:
        assert len(won) == 4
    else:
        assert len(won) == 1, results
        for i, r in results.items():
            if i != won[0]:
                assert 'appeared while converting' in str(r)
                assert r.exit_code == 6
    w = _load(dst)['state_dict']['w']
    assert w.shape == (256, ) and float(w[0]) in {float(i) for i in won}
    assert torch.equal(w, torch.full((256, ), float(w[0])))
    assert os.listdir(tmp_path) == ['out.pth']


RACER = '''
import os, sys, time
import mmconv.writing as writing
from mmconv.cli import main
barrier, n = sys.argv[1], int(sys.argv[2])
real = writing._place
def place(tmp, final, force):
    open(os.path.join(barrier, str(os.getpid())), 'w').close()
    deadline = time.time() + 120
    while len(os.listdir(barrier)) < n and time.time() < deadline:
        time.sleep(0.01)
    return real(tmp, final, force)
writing._place = place
sys.exit(main(sys.argv[3:]))
'''


@pytest.mark.slow
@pytest.mark.parametrize('force', [False, True])
def test_racing_cli_processes(r18, tmp_path, force):
    """Three ``mmconv convert`` processes to one DST, released together at
    the final step (a file barrier): without --force one exits 0, the
    others 6 with one line, and DST is the winner's output; with --force
    all exit 0 and DST is one complete output."""
    n = 3
    srcs = []
    for i in range(n):  # same weights, told apart by meta['source_file']
        srcs.append(tmp_path / f'src{i}.pth')
        os.link(r18, srcs[-1])
    barrier = tmp_path / 'barrier'
    barrier.mkdir()
    out = tmp_path / 'out'
    out.mkdir()
    dst = out / 'dst.pth'
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    procs = [subprocess.Popen(
        [sys.executable, '-c', RACER, str(barrier), str(n), 'convert',
         str(src), str(dst)] + (['--force'] if force else []),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for src in srcs]
    outs = [p.communicate(timeout=300) for p in procs]
    results = [(p.returncode, o, e) for p, (o, e) in zip(procs, outs)]
    codes = [rc for rc, _, _ in results]
    assert len(os.listdir(barrier)) == n  # all reached the final step
    if force:
        assert codes == [0] * n, results
    else:
        assert sorted(codes) == [0] + [6] * (n - 1), results
        for rc, _, err in results:
            if rc == 6:
                _assert_exit6(rc, err, f'{dst}: appeared while converting')
    assert os.listdir(out) == ['dst.pth']
    winner = _load(dst)['meta']['source_file']
    assert winner in {s.name for s in srcs}
    if not force:
        assert winner == srcs[codes.index(0)].name
    ref = tmp_path / 'ref.pth'
    assert main(['convert', str(tmp_path / winner), str(ref)]) == 0
    _same_checkpoint(dst, ref)


def test_check_destination_refuses_before_converting(tmp_path):
    """The pipeline's early check gives the same answers (and its probe
    leaves nothing)."""
    fifo = tmp_path / 'fifo'
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match='FIFO'):
        check_destination(str(fifo), force=True)
    check_destination(str(tmp_path / 'new.pth'))
    assert os.listdir(tmp_path) == ['fifo']
