# Copyright (c) mmconv contributors. All rights reserved.
"""Checkpoints given by URL or MMEngine file-backend name: the same safe
read path as local files (served over loopback http, nothing leaves the
machine)."""
import contextlib
import functools
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
from tests.test_io import _malicious_corpus


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves one directory and counts the GET requests per path."""

    requests = None  # set per server

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):  # noqa: N802 (http.server naming)
        self.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def served(tmp_path):
    """``(base_url, served_dir, requests)`` of a loopback http server."""
    root = tmp_path / 'www'
    root.mkdir()
    handler = type('Handler', (_QuietHandler, ), {'requests': []})
    server = http.server.ThreadingHTTPServer(
        ('127.0.0.1', 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{server.server_port}', root, handler.requests
    finally:
        server.shutdown()
        server.server_close()


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


def test_url_loads_once_into_the_hub_cache(tmp_path, served, hub_dir):
    """A real MoCo file by URL initialises an MMDetection ResNet-18 through
    SelfSupPretrained; the download is cached and reused."""
    from mmdet.models.backbones import ResNet

    from mmconv.init import SelfSupPretrainedInit
    base, root, requests = served
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None).state_dict()
    torch.save({'epoch': 1, 'state_dict': {
        f'module.encoder_q.{k}': v for k, v in tv.items()}},
        root / 'moco.pth.tar')
    url = f'{base}/moco.pth.tar'
    for _ in range(2):
        model = ResNet(depth=18)
        SelfSupPretrainedInit(checkpoint=url)(model)
        for key, value in model.state_dict().items():
            if not key.endswith('num_batches_tracked'):
                assert torch.equal(value, tv[key]), key
    assert requests == ['/moco.pth.tar']
    assert (hub_dir / 'checkpoints' / 'moco.pth.tar').is_file()


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
