# Copyright (c) mmconv contributors. All rights reserved.
"""DINOv3 ConvNeXt (official files, ``teacher_checkpoint.pth``,
transformers ``DINOv3ConvNextModel``) -> mmpretrain ``ConvNeXt``: detected,
converted, strict-loaded, and computing the official features."""
import re
from collections import OrderedDict
from typing import Dict, List, Tuple

import pytest
import torch

from mmconv import convert_checkpoint
from mmconv.detect import candidates
from mmconv.errors import KeyCollisionError
from tests.fixtures import dinov3_convnext_layouts as L

transformers = pytest.importorskip('transformers')

#: The real structure (4 stages, 7x7 depthwise, MLP x4) at tiny widths.
DEPTHS = (1, 1, 3, 1)
DIMS = (16, 32, 48, 64)


def mmpretrain_convnext(**kwargs):
    """mmpretrain's ConvNeXt backbone."""
    from mmpretrain.models.backbones.convnext import ConvNeXt
    return ConvNeXt(**kwargs)


def build_hf(seed: int = 0, depths=DEPTHS, dims=DIMS):
    """A transformers DINOv3ConvNextModel with random weights (every
    parameter, layer scale and norms included), eval mode."""
    from transformers import DINOv3ConvNextConfig, DINOv3ConvNextModel
    torch.manual_seed(seed)
    model = DINOv3ConvNextModel(DINOv3ConvNextConfig(
        depths=list(depths), hidden_sizes=list(dims))).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith('gamma'):
                p.copy_(0.5 + 0.1 * noise)
            elif p.dim() == 1 and 'norm' in name and name.endswith('weight'):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)
    return model


def saved_hf(model) -> Dict[str, torch.Tensor]:
    """The names ``save_pretrained`` writes (no ``model.`` prefix)."""
    return {re.sub(r'^model\.', '', k): v.clone()
            for k, v in model.state_dict().items()}


def to_official(model) -> 'OrderedDict[str, torch.Tensor]':
    """The official state dict holding the model's weights, in the
    official order, ``norms.3`` the very tensor of ``norm``."""
    hf = saved_hf(model)
    out: 'OrderedDict[str, torch.Tensor]' = OrderedDict()
    for key in L.official_manifest(DEPTHS, DIMS):
        if key.startswith('norms.3.'):
            out[key] = out['norm.' + key[len('norms.3.'):]]
            continue
        name = next(re.sub(p, t, key) for p, t in L.HF_NAMES
                    if re.search(p, key))
        out[key] = hf.pop(name)
    assert not hf, list(hf)
    return out


def reference(model, img: torch.Tensor) -> Tuple[List[torch.Tensor],
                                                   torch.Tensor]:
    """The four raw stage maps and the final-normed C5 map of the
    transformers model (the official ``get_intermediate_layers(n=4,
    reshape=True, norm=True)``: ``norms[0:3]`` are Identity,
    ``norms[3]`` the final norm on the patch tokens)."""
    with torch.no_grad():
        out = model(img, output_hidden_states=True)
    stages = list(out.hidden_states)[-4:]
    b, c, h, w = stages[-1].shape
    tokens = out.last_hidden_state[:, 1:]  # the pooled token is first
    return stages, tokens.transpose(1, 2).reshape(b, c, h, w)


def ours(state_dict: Dict[str, torch.Tensor], img: torch.Tensor
         ) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """mmpretrain ConvNeXt (arch as a dict, only the final output norm),
    strict-loaded: raw stage maps and its norm3 output."""
    net = mmpretrain_convnext(
        arch=dict(depths=list(DEPTHS), channels=list(DIMS)),
        out_indices=[3], gap_before_final_norm=False)
    net.load_state_dict(state_dict, strict=True)
    net.eval()
    raw: List[torch.Tensor] = []
    hooks = [s.register_forward_hook(lambda m, i, o: raw.append(o))
             for s in net.stages]
    with torch.no_grad():
        (final, ) = net(img)
    for h in hooks:
        h.remove()
    return raw, final


def _check_features(state_dict, model, size=(96, 128)):
    img = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    ref_stages, ref_final = reference(model, img)
    got_stages, got_final = ours(state_dict, img)
    for a, b in zip(got_stages, ref_stages):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() < 1e-4
    assert got_final.shape == ref_final.shape
    assert (got_final - ref_final).abs().max().item() < 1e-4


def test_official_file_detected_converted_and_computes_the_official_features(
        tmp_path):
    from mmconv.cli import main
    model = build_hf(1)
    official = to_official(model)
    assert [(k, tuple(v.shape)) for k, v in official.items()] == list(
        L.official_manifest(DEPTHS, DIMS).items())
    src = str(tmp_path / L.RELEASED['tiny'].replace('tiny', 'custom'))
    torch.save(official, src)
    dst = str(tmp_path / 'out.pth')
    assert main(['convert', src, dst]) == 0
    out = torch.load(dst, map_location='cpu', weights_only=True)
    sd = out['state_dict']
    assert out['meta']['source_format'] == 'dinov3_convnext'
    # bit for bit; the final norm once, as norm3
    assert len(sd) == len(official) - 2
    assert torch.equal(sd['norm3.weight'], official['norm.weight'])
    assert torch.equal(sd['stages.2.1.pointwise_conv1.weight'],
                       official['stages.2.1.pwconv1.weight'])
    _check_features(sd, model)


def test_detection_is_unique_and_the_report_accounts_for_every_key():
    official = to_official(build_hf(2))
    found = candidates(list(official))
    assert found[0].name == 'dinov3_convnext'
    assert found[1].rank < found[0].rank  # beats plain official ConvNeXt
    conv = convert_checkpoint(official)
    report = conv.report
    assert sorted(r.old for r in report.kept + report.aliases +
                  report.dropped) == sorted(official)
    assert [(r.old, r.new) for r in report.aliases] == [
        ('norms.3.weight', 'norm3.weight'), ('norms.3.bias', 'norm3.bias')]
    assert not report.dropped
    meta = conv.meta['convnext']
    assert meta['depths'] == list(DEPTHS) and meta['channels'] == list(DIMS)
    assert meta['final_norm'] and meta['layer_scale']
    assert 'depths=[1, 1, 3, 1]' in conv.config_hints('x.pth')


def test_final_norm_copies_that_differ_are_refused():
    official = to_official(build_hf(3))
    official['norms.3.weight'] = official['norm.weight'] + 1
    with pytest.raises(KeyCollisionError, match='norms.3.weight'):
        convert_checkpoint(official)


def test_eval_teacher_checkpoint(tmp_path):
    """``{'teacher': {'backbone.*', 'dino_head.*', 'ibot_head.*'}}``."""
    model = build_hf(4)
    official = to_official(model)
    teacher = {f'backbone.{k}': v for k, v in official.items()}
    teacher['dino_head.mlp.0.weight'] = torch.zeros(8, DIMS[-1])
    teacher['ibot_head.last_layer.weight'] = torch.zeros(8, 8)
    conv = convert_checkpoint({L.EVAL_ENTRY: teacher})
    assert conv.format.name == 'dinov3_convnext'
    assert {r.old for r in conv.report.dropped} == {
        'dino_head.mlp.0.weight', 'ibot_head.last_layer.weight'}
    _check_features(conv.state_dict, model)


@pytest.mark.parametrize('names', ['saved', 'in-memory', 'backbone'])
def test_transformers_layouts(names):
    """``save_pretrained`` names, transformers 5's in-memory ``model.``
    names, and ``DINOv3ConvNextBackbone`` (no final norm)."""
    model = build_hf(5)
    sd = saved_hf(model) if names == 'saved' else {
        k: v.clone() for k, v in model.state_dict().items()}
    if names == 'backbone':
        sd = {k: v for k, v in sd.items() if not k.startswith('layer_norm')}
    conv = convert_checkpoint(sd)
    assert conv.format.name == 'hf_dinov3_convnext'
    assert not conv.report.dropped
    if names == 'backbone':
        assert 'norm3.weight' not in conv.state_dict
        assert conv.meta['convnext']['final_norm'] is False
        return
    _check_features(conv.state_dict, model, size=(64, 64))
    # the same tensors as the official file's conversion
    official = convert_checkpoint(to_official(model)).state_dict
    assert set(official) == set(conv.state_dict)
    for key, value in official.items():
        assert torch.equal(value, conv.state_dict[key]), key


def test_save_pretrained_folder(tmp_path):
    """A ``save_pretrained`` folder through ``mmconv convert``."""
    from mmconv.cli import main
    model = build_hf(6)
    model.save_pretrained(str(tmp_path / 'hf'))
    dst = str(tmp_path / 'out.pth')
    assert main(['convert', str(tmp_path / 'hf'), dst]) == 0
    sd = torch.load(dst, map_location='cpu', weights_only=True)['state_dict']
    _check_features(sd, model, size=(64, 96))


@pytest.mark.parametrize('size', sorted(L.SIZES))
def test_every_released_size_converts_on_the_meta_device(size):
    """T, S, B, L at their real depths and widths (meta tensors: shapes
    only): the inferred arch is mmpretrain's name for that size."""
    depths, dims = L.SIZES[size]
    sd = {k: torch.empty(s, device='meta')
          for k, s in L.official_manifest(depths, dims).items()}
    sd['norms.3.weight'] = sd['norm.weight']
    sd['norms.3.bias'] = sd['norm.bias']
    conv = convert_checkpoint(sd)
    assert conv.format.name == 'dinov3_convnext'
    assert conv.meta['convnext']['arch'] == size
    net = mmpretrain_convnext(arch=size, out_indices=[3],
                              gap_before_final_norm=False)
    own = net.state_dict()
    assert {k: tuple(v.shape) for k, v in conv.state_dict.items()} == {
        k: tuple(v.shape) for k, v in own.items()}
