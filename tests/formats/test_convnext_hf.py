# Copyright (c) mmconv contributors. All rights reserved.
"""transformers' ConvNeXt / ConvNeXt V2 layouts (``hf_convnext``,
``hf_convnextv2`` of mmconv/formats/convnext.py) -> mmpretrain ``ConvNeXt``
as MMDetection's config builds it: the recorded layouts are what
transformers writes (4.57 writes the same); every layout is auto-detected,
converted by value (layer scale, GRN ``[1, 1, 1, C]`` -> ``[C]``),
strict-loaded into the shipped configs' backbones, and computes
transformers' ``hidden_states``; a folder initialises the backbone."""
import json
import os
import re
from typing import Dict

import pytest
import torch
import torch.nn.functional as nnf

from mmconv import convert_checkpoint
from mmconv.detect import candidates
from tests.fixtures import hf_backbone_layouts as F
from tests.helpers import hf_backbones as H

pytest.importorskip('transformers')

V1 = ('convnext/mask-rcnn_convnext-t-p4-w7-official-raw-pre_fpn_amp-'
      'ms-crop-3x_coco.py')
V2 = ('convnext/mask-rcnn_convnextv2-t-p4-w7-fcmae-selfsup-raw-pre_fpn_'
      'amp-ms-crop-3x_coco.py')
CN = F.BUILD['ConvNextModel'][2]
CLASSES = ('ConvNextModel', 'ConvNextForImageClassification',
           'ConvNextV2Model', 'ConvNextV2ForImageClassification')
PREFIX = {name: (F.DERIVED[name][1] if name in F.DERIVED else '')
          for name in CLASSES}
#: largest |difference| to transformers per class (printed with -s)
MAX_ABS: Dict[str, float] = {}


def _v2(name: str) -> bool:
    return name.startswith('ConvNextV2')


def backbone(v2: bool, **extra):
    """The shipped config's mmpretrain ConvNeXt at the recorded sizes (V2:
    the V2 config, use_grn=True, no layer scale)."""
    return H.build_backbone(V2 if v2 else V1, dict(
        arch=dict(depths=CN['depths'], channels=CN['hidden_sizes']),
        drop_path_rate=0.0, **extra))


def expected(hf: H.Tensors) -> H.Tensors:
    """What mmpretrain's ConvNeXt must hold, from transformers' saved
    names (base model, no prefix): convert_convnext*_to_pytorch.py read
    backwards, then mmpretrain's convnext_to_mmpretrain.py."""
    out: H.Tensors = {}
    block = {'dwconv': 'depthwise_conv', 'layernorm': 'norm',
             'pwconv1': 'pointwise_conv1', 'pwconv2': 'pointwise_conv2'}
    for key, value in hf.items():
        m = re.match(r'encoder\.stages\.(\d)\.layers\.(\d)\.(.+)\.(\w+)$',
                     key)
        if m:
            s, b, mod, leaf = m.groups()
            dst = f'stages.{s}.{b}.'
            if mod == 'grn':  # [1, 1, 1, C] -> [C]
                assert value.shape[:3] == (1, 1, 1)
                out[dst + {'weight': 'grn.gamma', 'bias': 'grn.beta'}[leaf]] \
                    = value[0, 0, 0]
            else:
                out[f'{dst}{block[mod]}.{leaf}'] = value
            continue
        m = re.match(r'encoder\.stages\.(\d)\.layers\.(\d)\.'
                     r'layer_scale_parameter$', key)
        if m:
            out[f'stages.{m.group(1)}.{m.group(2)}.gamma'] = value
            continue
        m = re.match(r'encoder\.stages\.(\d)\.downsampling_layer\.(\d)\.'
                     r'(\w+)$', key)
        if m:
            out['downsample_layers.{}.{}.{}'.format(*m.groups())] = value
            continue
        for src, dst in (('embeddings.patch_embeddings.',
                          'downsample_layers.0.0.'),
                         ('embeddings.layernorm.', 'downsample_layers.0.1.'),
                         ('layernorm.', 'norm3.')):
            if key.startswith(src):
                out[dst + key[len(src):]] = value
    return out


@pytest.mark.parametrize('name', CLASSES)
def test_recorded_layout_is_what_transformers_saves(name, tmp_path):
    """The fixture is transformers 5.25's own output; 4.57's file is the
    same (recorded), and so is 5.x ``state_dict()``."""
    model = H.build_hf(name)
    folder = tmp_path / 'saved'
    saved = H.save_folder(model, str(folder))
    assert sorted(H.rows(saved)) == sorted(H.saved_layout(name))
    config = json.loads((folder / 'config.json').read_text())
    assert {k: config[k] for k in H.saved_config(name)} == \
        H.saved_config(name)
    assert name in F.SAME_IN_4_57
    assert sorted(H.rows(model.state_dict())) == sorted(H.rows(saved))


@pytest.mark.parametrize('name', CLASSES)
def test_converts_every_tensor_by_value(name, tmp_path):
    v2 = _v2(name)
    saved = H.save_folder(H.build_hf(name), str(tmp_path / name))
    base = H.strip(saved, PREFIX[name])
    conv = convert_checkpoint(saved)
    assert conv.format.name == ('hf_convnextv2' if v2 else 'hf_convnext')
    found = candidates(list(saved))
    assert len(found) == 1 or found[1].rank < found[0].rank, found
    want = expected(base)
    assert set(conv.state_dict) == set(want)
    for key, value in want.items():
        assert torch.equal(conv.state_dict[key], value), key
    # GRN / layer scale: the declared changes, nothing else changed
    changed = {c.key for c in conv.changed}
    assert changed == {k for k in want if '.grn.' in k}
    assert all('grn_to_vector' in c.what for c in conv.changed)
    assert ('stages.0.0.gamma' in conv.state_dict) != v2
    report = conv.report
    assert sorted(r.old for r in report.kept + report.aliases +
                  report.dropped) == sorted(saved)
    assert {r.old for r in report.dropped} == \
        {k for k in saved if k.startswith('classifier.')}
    assert all('classifier' in r.reason for r in report.dropped)
    meta = conv.meta['convnext']
    assert meta['depths'] == CN['depths']
    assert meta['channels'] == CN['hidden_sizes']
    assert meta['use_grn'] == v2 and meta['layer_scale'] != v2
    # strict-loads into the shipped config's backbone; only the per-stage
    # output norms 0-2 (no counterpart in any ConvNeXt file) are fresh
    model = backbone(v2)
    result = model.load_state_dict(conv.state_dict, strict=False)
    assert not result.unexpected_keys
    assert set(result.missing_keys) == {f'norm{i}.{w}' for i in range(3)
                                        for w in ('weight', 'bias')}
    own = model.state_dict()
    model.load_state_dict(dict(conv.state_dict, **{
        k: own[k] for k in result.missing_keys}), strict=True)


@pytest.mark.parametrize('name', ['ConvNextModel', 'ConvNextV2Model'])
def test_features_equal_transformers(name, tmp_path):
    """Every stage's ``hidden_states`` equal transformers' within 1e-4;
    the pyramid's outputs are LayerNorms of them (fresh norms 0-2: weight 1,
    bias 0; norm3 = transformers' final layernorm), and with
    ``gap_before_final_norm`` the last one is transformers' pooled
    output."""
    v2 = _v2(name)
    hf_model = H.build_hf(name)
    saved = H.save_folder(hf_model, str(tmp_path / name))
    state = convert_checkpoint(saved).state_dict
    model = backbone(v2)
    model.load_state_dict(state, strict=False)
    stages = {}
    for i, stage in enumerate(model.stages):
        stage.register_forward_hook(
            lambda mod, args, out, i=i: stages.__setitem__(i, out))
    img = torch.randn(2, 3, 64, 64,
                      generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = hf_model(img, output_hidden_states=True)
        outs = model(img)
    diffs = {}
    for i in range(4):
        hidden = ref.hidden_states[i + 1]
        diffs[f'stage{i}'] = H.max_abs(stages[i], hidden)
        last = hidden.permute(0, 2, 3, 1)
        normed = hf_model.layernorm(last) if i == 3 else \
            nnf.layer_norm(last, last.shape[-1:], eps=1e-6)
        diffs[f'out{i}'] = H.max_abs(outs[i], normed.permute(0, 3, 1, 2))
    pooled = backbone(v2, gap_before_final_norm=True, out_indices=[3])
    pooled.load_state_dict(state, strict=False)
    with torch.no_grad():
        diffs['pooled'] = H.max_abs(pooled(img)[0], ref.pooler_output)
    MAX_ABS[name] = max(diffs.values())
    print(f'\n{name}: max |diff| vs transformers {diffs}')
    assert max(diffs.values()) < 1e-4, diffs
    assert ref.pooler_output.abs().max() > 0.1  # not a vacuous compare


@pytest.mark.parametrize('name', ['ConvNextForImageClassification',
                                  'ConvNextV2ForImageClassification'])
def test_folder_initialises_the_shipped_backbone(name, tmp_path, capsys):
    """A save_pretrained folder: ``mmconv convert`` writes a file read by
    ``torch.load(weights_only=True)``; ``SelfSupPretrained`` initialises
    the shipped config's backbone from the folder itself."""
    from mmconv.cli import main
    from mmconv.init import SelfSupPretrainedInit
    v2 = _v2(name)
    folder = str(tmp_path / 'folder')
    H.save_folder(H.build_hf(name), folder)
    assert os.path.isfile(os.path.join(folder, 'config.json'))
    dst = str(tmp_path / 'out.pth')
    assert main(['convert', folder, dst]) == 0
    assert ('hf_convnextv2' if v2 else 'hf_convnext') in \
        capsys.readouterr().out
    out = torch.load(dst, weights_only=True)
    model = backbone(v2)
    SelfSupPretrainedInit(checkpoint=folder)(model)
    state = model.state_dict()
    assert set(out['state_dict']) < set(state)
    for key, value in out['state_dict'].items():
        assert torch.equal(state[key], value), key


def test_config_that_does_not_describe_the_weights_is_refused(tmp_path,
                                                              capsys):
    from mmconv.cli import main
    folder = str(tmp_path / 'folder')
    H.save_folder(H.build_hf('ConvNextV2Model'), folder)
    path = os.path.join(folder, 'config.json')
    with open(path) as f:
        config = json.load(f)
    config['hidden_sizes'] = [96, 192, 384, 768]
    with open(path, 'w') as f:
        json.dump(config, f)
    dst = tmp_path / 'out.pth'
    capsys.readouterr()  # transformers' own progress bar
    assert main(['convert', folder, str(dst)]) == 5
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert 'hidden_sizes=[96, 192, 384, 768] but the weights have ' \
        '[8, 16, 24, 32]' in err
    assert not dst.exists()
