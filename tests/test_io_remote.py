# Copyright (c) mmconv contributors. All rights reserved.
"""Checkpoints given by URL or MMEngine file-backend name: the same safe
read path as local files (served over loopback http, nothing leaves the
machine)."""
import contextlib
import functools
import hashlib
import http.server
import os
import shutil
import threading
import types

import pytest
import torch
import torchvision
from torch import nn

from mmconv import InputError, UnsafeCheckpointError, load_source
from mmconv.cli import main as mmconv_main
from mmconv.fetching import cache_path
from tests.test_io import _malicious_corpus


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves one directory, counts the GET requests per path, and answers
    the paths in ``behaviours`` with a function (a misbehaving server)."""

    requests = None  # set per server
    behaviours = None  # path -> function(handler)

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):  # noqa: N802 (http.server naming)
        self.requests.append(self.path)
        behave = self.behaviours.get(self.path)
        if behave is None:
            super().do_GET()
            return
        try:
            behave(self)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should
        self.close_connection = True


@pytest.fixture
def server(tmp_path):
    """A loopback http server: ``.base`` URL, ``.root`` served directory,
    ``.requests`` (GET paths), ``.behaviours`` (path -> handler function)
    and ``.stop`` (set at the end: misbehaving handlers return)."""
    root = tmp_path / 'www'
    root.mkdir()
    handler = type('Handler', (_QuietHandler, ),
                   {'requests': [], 'behaviours': {}})
    httpd = http.server.ThreadingHTTPServer(
        ('127.0.0.1', 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05, ),
                              daemon=True)
    thread.start()
    stop = threading.Event()
    try:
        yield types.SimpleNamespace(
            base=f'http://127.0.0.1:{httpd.server_port}', root=root,
            requests=handler.requests, behaviours=handler.behaviours,
            stop=stop)
    finally:
        stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture
def served(server):
    """``(base_url, served_dir, requests)`` of a loopback http server."""
    return server.base, server.root, server.requests


@pytest.fixture(autouse=True)
def hub_dir(tmp_path, monkeypatch):
    """A private torch hub cache (downloads land here)."""
    monkeypatch.setattr(torch.hub, '_hub_dir', None)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    return tmp_path / 'torch_home' / 'hub'


def _serve_corpus(tmp_path, root):
    """Copy the hostile corpus into the served directory."""
    marker, files = _malicious_corpus(tmp_path)
    for path in files.values():
        shutil.copy(path, root / path.name)
    return marker, {name: path.name for name, path in files.items()}


def test_hostile_urls_are_refused_everywhere(tmp_path, served):
    """load_source, SelfSupPretrained and the CLI refuse every payload
    served over http; the payload never runs and nothing is written."""
    from mmconv.init import SelfSupPretrainedInit
    base, root, _ = served
    marker, names = _serve_corpus(tmp_path, root)
    for what, name in names.items():
        url = f'{base}/{name}'
        with pytest.raises((UnsafeCheckpointError, InputError)) as err:
            load_source(url)
        assert url in str(err.value) and '\n' not in str(err.value), what
        with pytest.raises((UnsafeCheckpointError, InputError)):
            SelfSupPretrainedInit(checkpoint=url)(nn.Conv2d(3, 4, 1))
        dst = tmp_path / f'{name}.out.pth'
        assert mmconv_main(['convert', url, str(dst)]) in (3, 4), what
        assert not dst.exists(), what
        assert not marker.exists(), what
    assert _cache_files() == []  # a refused download is never cached


def test_hook_never_loads_a_hostile_url(tmp_path, served):
    """The load-check hook reads a plain Pretrained URL safely: refused
    (logged), the run fails as 'still random', the payload never runs."""
    from mmengine.model import BaseModule

    from mmconv.hooks import PretrainedLoadCheckHook
    base, root, _ = served
    marker, names = _serve_corpus(tmp_path, root)
    url = f'{base}/{names["payload nested in state_dict"]}'
    model = nn.Module()
    model.backbone = BaseModule(
        init_cfg=dict(type='Pretrained', checkpoint=url))
    model.backbone.conv = nn.Conv2d(3, 4, 1)
    runner = types.SimpleNamespace(model=model)
    hook = PretrainedLoadCheckHook()
    hook.before_run(runner)
    with pytest.raises(RuntimeError, match='random initialisation'):
        hook.before_train(runner)
    assert not marker.exists()


def _moco_file(path) -> dict:
    """Write a MoCo v2 training file of a seeded torchvision ResNet-18 to
    ``path``; return the ResNet's state dict."""
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None).state_dict()
    torch.save({'epoch': 1, 'state_dict': {
        f'module.encoder_q.{k}': v for k, v in tv.items()}}, path)
    return tv


def test_url_loads_once_into_the_hub_cache(tmp_path, served, hub_dir):
    """A real MoCo file by URL initialises an MMDetection ResNet-18 through
    SelfSupPretrained; the download is cached and reused."""
    from mmdet.models.backbones import ResNet

    from mmconv.init import SelfSupPretrainedInit
    base, root, requests = served
    tv = _moco_file(root / 'moco.pth.tar')
    url = f'{base}/moco.pth.tar'
    for _ in range(2):
        model = ResNet(depth=18)
        SelfSupPretrainedInit(checkpoint=url)(model)
        for key, value in model.state_dict().items():
            if not key.endswith('num_batches_tracked'):
                assert torch.equal(value, tv[key]), key
    assert requests == ['/moco.pth.tar']
    assert _cache_files() == [cache_path(url)]
    assert cache_path(url).startswith(str(hub_dir))
    assert os.path.basename(cache_path(url)) == 'moco.pth.tar'


def test_missing_url_is_an_input_error(served, tmp_path):
    """A 404 is one line naming the URL, exit 3 on the command line."""
    base, _, _ = served
    url = f'{base}/nope.pth'
    with pytest.raises(InputError, match='download failed'):
        load_source(url)
    assert mmconv_main(['convert', url, str(tmp_path / 'o.pth')]) == 3


class _DirBackend:
    """An MMEngine file backend serving one local directory under
    ``mmconvtest://`` (stands in for s3/petrel/custom backends)."""

    root = ''

    def __init__(self, **kwargs):
        pass

    def _path(self, name):
        return os.path.join(self.root, str(name).split('://', 1)[1])

    def get(self, name):
        with open(self._path(name), 'rb') as f:
            return f.read()

    def get_text(self, name, encoding='utf-8'):
        return self.get(name).decode(encoding)

    @contextlib.contextmanager
    def get_local_path(self, name):
        yield self._path(name)


def test_hostile_file_from_a_registered_backend_is_refused(tmp_path):
    """Names of a registered MMEngine file backend are fetched through
    mmengine.fileio and read by the same safe loader."""
    from mmengine.fileio import register_backend
    from mmengine.fileio.backends import BaseStorageBackend

    from mmconv.init import SelfSupPretrainedInit
    root = tmp_path / 'bucket'
    root.mkdir()
    marker, names = _serve_corpus(tmp_path, root)
    backend = type('MMConvTestBackend', (_DirBackend, BaseStorageBackend),
                   {'root': str(root)})
    register_backend('mmconvtest', backend, force=True, prefixes='mmconvtest')
    for name in names.values():
        with pytest.raises((UnsafeCheckpointError, InputError)):
            SelfSupPretrainedInit(checkpoint=f'mmconvtest://{name}')(
                nn.Conv2d(3, 4, 1))
    good = {'state_dict': {'conv1.weight': torch.ones(2)}}
    torch.save(good, root / 'good.pth')
    assert torch.equal(
        load_source('mmconvtest://good.pth')['state_dict']['conv1.weight'],
        torch.ones(2))
    assert not marker.exists()


def test_plain_pretrained_url_is_read_safely(tmp_path, served):
    """With mmconv imported (custom_imports), MMEngine's own Pretrained
    reads URLs through mmconv's safe reader: the payload never runs."""
    from mmengine.model import BaseModule
    base, root, _ = served
    marker, names = _serve_corpus(tmp_path, root)
    for name in names.values():
        module = BaseModule(init_cfg=dict(type='Pretrained',
                                          checkpoint=f'{base}/{name}'))
        module.conv = nn.Conv2d(3, 4, 1)
        with pytest.raises((UnsafeCheckpointError, InputError)):
            module.init_weights()
    assert not marker.exists()


# ------------------------------------------------ bounded, URL-keyed cache


def _cache_files():
    """Every file under the (private) hub checkpoints directory, temporary
    and hidden ones included."""
    top = os.path.join(torch.hub.get_dir(), 'checkpoints')
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(top)
                  for f in fs)


def _weights(path, seed):
    """Save a small state dict with seeded random tensors; return it."""
    torch.manual_seed(seed)
    sd = {'conv1.weight': torch.randn(8, 3, 3, 3), 'fc.bias': torch.randn(8)}
    torch.save({'state_dict': sd}, path)
    return sd


def _stall(handler, stop):
    """Headers announcing 1 MB, 10 bytes, then silence until ``stop``."""
    handler.send_response(200)
    handler.send_header('Content-Length', str(10**6))
    handler.end_headers()
    handler.wfile.write(b'PK\x03\x04' + b'\0' * 6)
    handler.wfile.flush()
    stop.wait(30)


def _endless(handler, stop):
    """A body without Content-Length that never ends (until ``stop`` or
    the client hangs up)."""
    handler.send_response(200)
    handler.end_headers()
    block = b'\0' * 65536
    while not stop.is_set():
        handler.wfile.write(block)


def _lying(data):
    """A handler announcing 100 bytes more than ``data`` (a complete,
    readable file), sending ``data``, then closing."""
    def behave(handler):
        handler.send_response(200)
        handler.send_header('Content-Length', str(len(data) + 100))
        handler.end_headers()
        handler.wfile.write(data)
    return behave


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cli_error(capsys, argv):
    """``(exit code, stderr)`` of the command line."""
    capsys.readouterr()
    code = mmconv_main(argv)
    return code, capsys.readouterr().err


def test_same_file_name_different_urls_are_cached_apart(server):
    """Two URLs ending in resnet50.pth get one cache entry each, and each
    loads its own weights, from the cache the second time."""
    expected = {}
    for seed, folder in enumerate(('a', 'b')):
        (server.root / folder).mkdir()
        url = f'{server.base}/{folder}/resnet50.pth'
        expected[url] = _weights(server.root / folder / 'resnet50.pth', seed)
    for _ in range(2):
        for url, sd in expected.items():
            got = load_source(url)['state_dict']
            assert all(torch.equal(got[k], v) for k, v in sd.items()), url
    assert sorted(server.requests) == ['/a/resnet50.pth', '/b/resnet50.pth']
    entries = [cache_path(url) for url in expected]
    assert _cache_files() == sorted(entries)
    assert {os.path.basename(e) for e in entries} == {'resnet50.pth'}


def test_stalled_download_times_out(server, tmp_path, monkeypatch, capsys):
    """Headers, then silence: the configured timeout ends it (keyword or
    MMCONV_DOWNLOAD_TIMEOUT), exit 3 naming the URL; nothing is cached."""
    server.behaviours['/stall.pth'] = lambda h: _stall(h, server.stop)
    url = f'{server.base}/stall.pth'
    with pytest.raises(InputError, match='timed out') as err:
        load_source(url, timeout=0.5)
    assert url in str(err.value) and '\n' not in str(err.value)
    monkeypatch.setenv('MMCONV_DOWNLOAD_TIMEOUT', '0.5')
    code, stderr = _cli_error(capsys, ['convert', url,
                                       str(tmp_path / 'o.pth')])
    assert code == 3 and 'timed out' in stderr and url in stderr
    assert 'MMCONV_DOWNLOAD_TIMEOUT' in stderr
    assert stderr.count('\n') == 1
    assert _cache_files() == []
    assert not (tmp_path / 'o.pth').exists()


def test_endless_body_is_cut_at_the_size_limit(server, tmp_path,
                                               monkeypatch, capsys):
    """A body that never ends stops at the limit (keyword or
    MMCONV_MAX_DOWNLOAD_BYTES), exit 3; a file whose Content-Length is
    over the limit is refused up front; nothing is cached."""
    server.behaviours['/endless.pth'] = lambda h: _endless(h, server.stop)
    url = f'{server.base}/endless.pth'
    with pytest.raises(InputError, match='262144-byte limit'):
        load_source(url, max_bytes=256 * 1024)
    monkeypatch.setenv('MMCONV_MAX_DOWNLOAD_BYTES', '1M')
    code, stderr = _cli_error(capsys, ['convert', url,
                                       str(tmp_path / 'o.pth')])
    assert code == 3 and '1048576-byte limit' in stderr and url in stderr
    _weights(server.root / 'big.pth', 0)
    big = f'{server.base}/big.pth'
    with pytest.raises(InputError, match='announces'):
        load_source(big, max_bytes=100)
    assert _cache_files() == []
    monkeypatch.setenv('MMCONV_MAX_DOWNLOAD_BYTES', 'lots')
    code, stderr = _cli_error(capsys, ['convert', big,
                                       str(tmp_path / 'o.pth')])
    assert code == 2 and 'MMCONV_MAX_DOWNLOAD_BYTES' in stderr
    monkeypatch.delenv('MMCONV_MAX_DOWNLOAD_BYTES')
    assert load_source(big)['state_dict']['fc.bias'].shape == (8, )


def test_short_body_is_not_cached_and_heals(server, tmp_path, capsys):
    """A body shorter than its Content-Length fails (exit 3) and is not
    cached; once the server is fixed the next run succeeds."""
    sd = _weights(server.root / 'r50.pth', 3)
    url = f'{server.base}/r50.pth'
    server.behaviours['/r50.pth'] = _lying((server.root /
                                            'r50.pth').read_bytes())
    with pytest.raises(InputError, match='bytes the server announced'):
        load_source(url)
    code, stderr = _cli_error(capsys, ['convert', url,
                                       str(tmp_path / 'o.pth')])
    assert code == 3 and 'bytes the server announced' in stderr
    assert _cache_files() == []
    del server.behaviours['/r50.pth']  # the server is fixed
    got = load_source(url)['state_dict']
    assert all(torch.equal(got[k], v) for k, v in sd.items())
    assert _cache_files() == [cache_path(url)]


def test_bad_cached_entry_is_never_reused(server):
    """A cache entry that does not read (left by an older tool, a crash or
    a bad disk) is removed and downloaded afresh; when the server is
    still bad, the error says so and nothing stays in the cache."""
    sd = _weights(server.root / 'r50.pth', 4)
    url = f'{server.base}/r50.pth'
    entry = cache_path(url)
    os.makedirs(os.path.dirname(entry))
    with open(entry, 'wb') as f:
        f.write(b'PK\x03\x04 not a checkpoint')
    got = load_source(url)['state_dict']
    assert all(torch.equal(got[k], v) for k, v in sd.items())
    assert server.requests == ['/r50.pth']
    assert load_source(url)['state_dict'].keys() == sd.keys()
    assert server.requests == ['/r50.pth']  # now from the cache
    with open(entry, 'wb') as f:
        f.write(b'PK\x03\x04 not a checkpoint')
    (server.root / 'r50.pth').write_bytes(b'garbage, not a checkpoint')
    with pytest.raises(InputError, match='not cached') as err:
        load_source(url)
    assert url in str(err.value) and entry not in str(err.value)
    assert _cache_files() == []


def test_sha256_fragment_and_keyword(server, tmp_path, capsys):
    """``#sha256=`` (full digest or a prefix) and ``sha256=`` are checked
    on download and on the cached copy; a mismatch is exit 3 and keeps
    nothing; SelfSupPretrained and the CLI accept the fragment."""
    from mmconv.init import SelfSupPretrainedInit
    sd = _weights(server.root / 'w.pth', 5)
    _weights(server.root / 'other.pth', 6)
    digest = _sha256(server.root / 'w.pth')
    wrong = _sha256(server.root / 'other.pth')
    url = f'{server.base}/w.pth'
    with pytest.raises(InputError, match='sha256 mismatch'):
        load_source(f'{url}#sha256={wrong}')
    code, stderr = _cli_error(capsys, ['convert', f'{url}#sha256={wrong}',
                                       str(tmp_path / 'o.pth')])
    assert code == 3 and 'sha256 mismatch' in stderr
    with pytest.raises(InputError, match='sha256 mismatch'):
        SelfSupPretrainedInit(checkpoint=f'{url}#sha256={wrong}')(
            nn.Conv2d(3, 4, 1))
    assert _cache_files() == []
    got = load_source(f'{url}#sha256={digest}')['state_dict']
    assert all(torch.equal(got[k], v) for k, v in sd.items())
    assert _cache_files() == [cache_path(url)]
    n = len(server.requests)
    load_source(url, sha256=digest[:10].upper())  # cached copy checked
    load_source(f'{url}#sha256={digest[:8]}', sha256=digest)
    assert len(server.requests) == n
    with pytest.raises(InputError, match='sha256 mismatch'):
        load_source(url, sha256=wrong)  # downloads again, keeps the entry
    assert _cache_files() == [cache_path(url)]
    with pytest.raises(InputError, match='disagree'):
        load_source(f'{url}#sha256={digest}', sha256=wrong)
    with pytest.raises(InputError, match='hex digits'):
        load_source(f'{url}#sha256=xyz')


def test_progress_bar_only_on_a_terminal(server, capfd):
    """No progress bar when standard error is not a terminal (pytest
    captures it); ``progress=True`` forces one."""
    _weights(server.root / 'p.pth', 7)
    _weights(server.root / 'q.pth', 8)
    capfd.readouterr()
    load_source(f'{server.base}/p.pth')
    assert capfd.readouterr().err == ''
    load_source(f'{server.base}/q.pth', progress=True)
    err = capfd.readouterr().err
    assert 'q.pth' in err and 'MiB' in err and '100%' in err


def _dist_url_worker(rank, world, url, port, torch_home, out_dir):
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port),
                      TORCH_HOME=torch_home)
    dist.init_process_group('gloo', rank=rank, world_size=world)
    sd = load_source(url)['state_dict']
    torch.save(sd, os.path.join(out_dir, f'rank{rank}.pth'))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_download_once(server, tmp_path):
    """Two gloo ranks load one URL: rank 0 downloads, rank 1 reads the
    cache (one request), both get the file's weights."""
    import socket

    import torch.multiprocessing as mp
    sd = _weights(server.root / 'd.pth', 9)
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    mp.spawn(_dist_url_worker, nprocs=2, args=(
        2, f'{server.base}/d.pth', port, str(tmp_path / 'torch_home'),
        str(tmp_path)))
    assert server.requests == ['/d.pth']
    for rank in range(2):
        got = torch.load(tmp_path / f'rank{rank}.pth')
        assert all(torch.equal(got[k], v) for k, v in sd.items())


def test_convert_from_a_url_is_read_whole(tmp_path, served):
    """``mmconv convert URL DST``: the download (and then its cached copy)
    is read whole, not streamed from a file that moves into the cache (or
    is removed) once it is read; the output equals the local file's."""
    from mmconv.lazy import is_lazy
    from mmconv.pipeline import convert_file
    base, root, _ = served
    _moco_file(root / 'moco.pth.tar')
    local = convert_file(str(root / 'moco.pth.tar'), str(tmp_path / 'l.pth'))
    assert all(is_lazy(v) for v in local.conversion.source.values())
    expected = torch.load(local.path, weights_only=True)['state_dict']
    for attempt in ('download', 'cache'):
        written = convert_file(f'{base}/moco.pth.tar',
                               str(tmp_path / f'{attempt}.pth'))
        assert not any(is_lazy(v)
                       for v in written.conversion.source.values())
        got = torch.load(written.path, weights_only=True)['state_dict']
        assert list(got) == list(expected)
        assert all(torch.equal(got[k], v) for k, v in expected.items())
