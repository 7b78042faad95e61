# Copyright (c) mmconv contributors. All rights reserved.
"""SelfSupPretrained initializer and PretrainedLoadCheckHook (MMEngine
models; the MMDetection Mask R-CNN cases live in test_mmdet_models.py)."""
import http.server
import os
import threading

import pytest
import torch
from mmengine.model import BaseModule
from mmengine.registry import HOOKS, WEIGHT_INITIALIZERS
from torch import nn

import mmconv  # noqa: F401  (registers the initializer and hook)
from mmconv import ConversionError
from mmconv.hooks import PretrainedLoadCheckHook


class Stem(BaseModule):
    """A child with its own initializer (would overwrite a naive load)."""

    def __init__(self):
        super().__init__(init_cfg=dict(type='Constant', val=3.0,
                                       layer='Conv2d'))
        self.conv1 = nn.Conv2d(3, 4, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(4)


class TinyBackbone(BaseModule):
    """A stem child with its own initializer, and a layer of its own."""

    def __init__(self, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.stem = Stem()
        self.layer1 = nn.Conv2d(4, 4, 1)


def _moco_file(tmp_path, model):
    """Save ``model``'s weights in the MoCo layout (plus encoder_k/queue)."""
    sd = {}
    for k, v in model.state_dict().items():
        name = k
        sd[f'module.encoder_q.{name}'] = torch.randn_like(v.float()).to(
            v.dtype) if v.is_floating_point() else v.clone()
        sd[f'module.encoder_k.{name}'] = torch.zeros_like(v)
    sd['module.queue'] = torch.randn(8, 4)
    path = tmp_path / 'moco.pth.tar'
    torch.save({'epoch': 1, 'state_dict': sd}, path)
    return path, sd


def test_registered():
    """Registered in MMEngine's registries under the documented names."""
    init = WEIGHT_INITIALIZERS.build(dict(type='SelfSupPretrained',
                                          checkpoint='x.pth', method='moco'))
    assert isinstance(init, mmconv.SelfSupPretrainedInit)
    assert init.method == 'moco'
    hook = HOOKS.build(dict(type='PretrainedLoadCheckHook',
                            fail_on_unchanged=False))
    assert isinstance(hook, PretrainedLoadCheckHook)
    assert not hook.fail_on_unchanged


def test_import_is_light_and_registers():
    """`import mmconv` registers without importing torch; the command
    line's --help never imports torch."""
    import subprocess
    import sys
    code = ('import sys, mmconv; from mmengine.registry import HOOKS, '
            'WEIGHT_INITIALIZERS as W; '
            "assert 'SelfSupPretrained' in W.module_dict; "
            "assert 'PretrainedLoadCheckHook' in HOOKS.module_dict; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, '-c', code], check=True)


def test_wins_over_child_initializer(tmp_path):
    """After init_weights the weights equal the checkpoint, although the
    child's own init_cfg (Constant 3.0) runs too."""
    model = TinyBackbone()
    path, sd = _moco_file(tmp_path, model)
    model = TinyBackbone(init_cfg=dict(type='SelfSupPretrained',
                                       checkpoint=str(path), method='moco'))
    model.init_weights()
    got = model.state_dict()
    assert set(got) == {k[len('module.encoder_q.'):] for k in sd
                        if k.startswith('module.encoder_q.')}
    for k, v in got.items():
        assert torch.equal(v, sd[f'module.encoder_q.{k}']), k


def test_naive_pretrained_subclass_would_lose(tmp_path):
    """Control: loading before the children initialise is overwritten —
    this is what SelfSupPretrained must avoid."""
    model = TinyBackbone()
    path, sd = _moco_file(tmp_path, model)
    init = mmconv.SelfSupPretrainedInit(checkpoint=str(path), method='moco')
    init(model)  # loads, then the child's initializer runs again below
    model.stem._is_init = False
    model.stem.init_weights()
    assert torch.all(model.stem.conv1.weight == 3.0)


def test_wrong_method_and_unrelated_checkpoint_raise(tmp_path):
    """A MoCo file read as SwAV, and an unrelated file: clear errors."""
    model = TinyBackbone()
    path, _ = _moco_file(tmp_path, model)
    m = TinyBackbone(init_cfg=dict(type='SelfSupPretrained',
                                   checkpoint=str(path), method='swav'))
    with pytest.raises(ConversionError, match='no ResNet backbone tensor'):
        m.init_weights()
    other = tmp_path / 'other.pth'
    torch.save({'state_dict': {'backbone.conv1.weight': torch.zeros(9, 9)}},
               other)
    m = TinyBackbone(init_cfg=dict(type='SelfSupPretrained',
                                   checkpoint=str(other)))
    with pytest.raises(ConversionError) as err:
        m.init_weights()
    msg = str(err.value)
    assert 'mmpretrain' in msg and '/' in msg and 'not loaded' in msg
    assert "method=" in msg and 'prefix=' in msg


def test_min_coverage_relaxes(tmp_path):
    """Partial loads pass with min_coverage and are counted."""
    model = TinyBackbone()
    path, sd = _moco_file(tmp_path, model)
    del_keys = [k for k in sd if 'layer1' in k]
    for k in del_keys:
        del sd[k]
    torch.save({'state_dict': sd}, path)
    strict = TinyBackbone(init_cfg=dict(type='SelfSupPretrained',
                                        checkpoint=str(path), method='moco'))
    with pytest.raises(ConversionError, match='layer1'):
        strict.init_weights()
    init = mmconv.SelfSupPretrainedInit(checkpoint=str(path), method='moco',
                                        min_coverage=0.5)
    target = TinyBackbone()
    init(target)
    assert init.total == len([k for k in target.state_dict()
                              if 'num_batches' not in k])
    assert len(init.loaded) == init.total - 2
    assert 'moco format' in init._get_init_info()


def test_refused_file_leaves_the_module_untouched(tmp_path):
    """A coverage refusal happens before anything is loaded: the tensors
    that would fit are not half-loaded."""
    model = TinyBackbone()
    path, sd = _moco_file(tmp_path, model)
    for k in [k for k in sd if 'layer1' in k]:
        del sd[k]
    torch.save({'state_dict': sd}, path)
    target = TinyBackbone()
    init = mmconv.SelfSupPretrainedInit(checkpoint=str(path), method='moco')
    with pytest.raises(ConversionError, match='layer1'):
        init(target)
    fitting = [k for k in target.state_dict()
               if f'module.encoder_q.{k}' in sd and 'num_batches' not in k]
    assert fitting
    for key in fitting:  # none of the file's values arrived
        assert not torch.equal(target.state_dict()[key],
                               sd[f'module.encoder_q.{key}']), key


def test_url_scheme_through_mmengine(tmp_path, monkeypatch):
    """An http:// checkpoint goes through MMEngine's CheckpointLoader
    (download + cache) and converts the same way."""
    model = TinyBackbone()
    path, sd = _moco_file(tmp_path, model)
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(  # noqa
        *a, directory=str(tmp_path), **k)
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    try:
        url = f'http://127.0.0.1:{server.server_address[1]}/{path.name}'
        m = TinyBackbone(init_cfg=dict(type='SelfSupPretrained',
                                       checkpoint=url, method='moco'))
        m.init_weights()
    finally:
        server.shutdown()
    assert torch.equal(m.stem.conv1.weight,
                       sd['module.encoder_q.stem.conv1.weight'])
    cached = [f for _, _, fs in os.walk(tmp_path / 'torch_home') for f in fs]
    assert path.name in cached


def test_own_layout_loads_as_pretrained_would(tmp_path):
    """A file holding exactly the module's own keys (no registered format
    fits a TinyBackbone) ends with the file's weights, as with MMEngine's
    Pretrained, although the child has its own init_cfg; the same file
    through Pretrained gives the same weights."""
    torch.manual_seed(1)
    saved = {k: torch.randn_like(v.float()).to(v.dtype)
             if v.is_floating_point() else v.clone()
             for k, v in TinyBackbone().state_dict().items()}
    path = tmp_path / 'own.pth'
    torch.save({'state_dict': saved, 'meta': {}}, path)
    results = []
    for kind in ('SelfSupPretrained', 'Pretrained'):
        model = TinyBackbone(init_cfg=dict(type=kind, checkpoint=str(path)))
        model.init_weights()
        results.append(model.state_dict())
        for k, v in model.state_dict().items():
            assert torch.equal(v, saved[k]), (kind, k)
    assert all(torch.equal(results[0][k], results[1][k]) for k in saved)


def test_own_layout_with_too_few_keys_raises(tmp_path):
    """Own-layout files obey min_coverage like converted ones."""
    model = TinyBackbone()
    sd = {'layer1.weight': torch.zeros(4, 4, 1, 1)}
    path = tmp_path / 'part.pth'
    torch.save(sd, path)
    init = mmconv.SelfSupPretrainedInit(checkpoint=str(path))
    with pytest.raises(ConversionError, match="own layout"):
        init(model)


def test_safetensors_through_pretrained_and_load_from(tmp_path):
    """A .safetensors output works in init_cfg through SelfSupPretrained
    and through MMEngine's Pretrained and load_checkpoint (load_from), as
    the README claims."""
    from mmengine.runner.checkpoint import load_checkpoint

    from mmconv.cli import main
    model = TinyBackbone()
    path, sd = _moco_file(tmp_path, model)
    dst = tmp_path / 'tiny.safetensors'
    assert main(['convert', str(path), str(dst), '--from', 'moco']) == 0
    expected = {k[len('module.encoder_q.'):]: v for k, v in sd.items()
                if k.startswith('module.encoder_q.')}
    for kind in ('SelfSupPretrained', 'Pretrained'):
        m = TinyBackbone(init_cfg=dict(type=kind, checkpoint=str(dst)))
        m.init_weights()
        for k, v in m.state_dict().items():
            assert torch.equal(v, expected[k]), (kind, k)
    m = TinyBackbone()
    load_checkpoint(m, str(dst), map_location='cpu', strict=True)
    assert torch.equal(m.layer1.weight, expected['layer1.weight'])
