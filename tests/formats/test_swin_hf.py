# Copyright (c) mmconv contributors. All rights reserved.
"""transformers' Swin / Swin V2 layouts (``hf_swin``, ``hf_swinv2`` of
mmconv/formats/swin.py) -> MMDetection ``SwinTransformer`` / mmpretrain
``SwinTransformerV2``: the recorded layouts are what transformers writes;
every layout (5.25 and 4.57 files, 5.x ``state_dict()``, lone file and
``save_pretrained`` folder) is auto-detected, converted by value (q, k, v
order and the patch-merging regroup checked independently), strict-loaded
into the shipped configs' backbones, and computes transformers' features.
"""
import json
import os
import re
from typing import Dict, Tuple

import pytest
import torch
import torch.nn.functional as nnf

from mmconv import ConversionError, convert_checkpoint
from mmconv.detect import candidates
from tests.fixtures import hf_backbone_layouts as F
from tests.fixtures.swin_layouts import (official_relative_position_index,
                                         unfold_permutation)
from tests.helpers import hf_backbones as H
from tests.helpers.tiers import sweep

pytest.importorskip('transformers')

SWIN_T = 'swin/mask-rcnn_swin-t-p4-w7-official-raw-pre_fpn_1x_coco.py'
SWINV2 = 'swin/mask-rcnn_swinv2-t-w8-official-raw-pre_fpn_1x_coco.py'
CONVNEXT = ('convnext/mask-rcnn_convnext-t-p4-w7-official-raw-pre_fpn_amp-'
            'ms-crop-3x_coco.py')
SW = F.BUILD['SwinModel'][2]
WINDOW, SIZE = SW['window_size'], SW['image_size']
CLASSES = ('SwinModel', 'SwinForImageClassification',
           'SwinForMaskedImageModeling', 'Swinv2Model',
           'Swinv2ForImageClassification', 'Swinv2ForMaskedImageModeling')
#: class -> prefix of its base model
PREFIX = {name: (F.DERIVED[name][1] if name in F.DERIVED else '')
          for name in CLASSES}
#: largest |difference| to transformers per case (printed with -s)
MAX_ABS: Dict[str, float] = {}


def _v2(name: str) -> bool:
    return name.startswith('Swinv2')


def backbone(v2: bool):
    """The shipped config's backbone at the recorded sizes."""
    if v2:
        return H.build_backbone(SWINV2, dict(
            arch=dict(embed_dims=SW['embed_dim'], depths=SW['depths'],
                      num_heads=SW['num_heads'],
                      extra_norm_every_n_blocks=0),
            img_size=SIZE, window_size=WINDOW,
            pretrained_window_sizes=[0] * 4, drop_path_rate=0.0))
    return H.build_backbone(SWIN_T, dict(
        embed_dims=SW['embed_dim'], depths=SW['depths'],
        num_heads=SW['num_heads'], window_size=WINDOW,
        pretrain_img_size=SIZE, drop_path_rate=0.0))


def never_pretrained(model) -> set:
    """Target keys no Swin checkpoint has (fresh per-stage norms, rebuilt
    buffers)."""
    return {k for k in model.state_dict() if re.match(r'norm[0-2]\.', k)
            or k.endswith(('relative_position_index',
                           'relative_coords_table'))}


# --- the mapping, written independently of the rules ------------------------
def expected(hf: H.Tensors, v2: bool) -> H.Tensors:
    """What the target must hold, from transformers' saved names (base
    model, no prefix): convert_swin*_timm_to_pytorch.py read backwards."""
    out: H.Tensors = {}
    for key, value in hf.items():
        m = re.match(r'encoder\.layers\.(\d)\.blocks\.(\d)\.(.*)$', key)
        if m:
            s, b, rest = m.groups()
            dst = f'stages.{s}.blocks.{b}.'
            attn = dst + 'attn.w_msa.'
            names = {
                'layernorm_before': dst + 'norm1',
                'layernorm_after': dst + 'norm2',
                'intermediate.dense': dst + 'ffn.layers.0.0',
                'output.dense': dst + 'ffn.layers.1',
                'attention.output.dense': attn + 'proj',
            }
            mod, _, leaf = rest.rpartition('.')
            if mod in names:
                out[f'{names[mod]}.{leaf}'] = value
            elif rest.endswith('relative_position_bias_table'):
                out[attn + 'relative_position_bias_table'] = value
            elif rest == 'attention.self.logit_scale':
                out[attn + 'logit_scale'] = value
            elif rest.startswith('attention.self.continuous_position'):
                out[attn + 'cpb_mlp.' + rest.split('.', 3)[3]] = value
            elif rest == 'attention.self.query.bias' and v2:
                out[attn + 'q_bias'] = value
            elif rest == 'attention.self.value.bias' and v2:
                out[attn + 'v_bias'] = value
            elif rest == 'attention.self.query.' + leaf:
                p = f'encoder.layers.{s}.blocks.{b}.attention.self.'
                out[attn + 'qkv.' + leaf] = torch.cat(
                    [hf[p + 'query.' + leaf], hf[p + 'key.' + leaf],
                     hf[p + 'value.' + leaf]])
            continue
        m = re.match(r'encoder\.layers\.(\d)\.downsample\.(\w+)\.(\w+)$', key)
        if m:
            s, mod, leaf = int(m.group(1)), m.group(2), m.group(3)
            dst = f'stages.{s + 1 if v2 else s}.downsample.{mod}.{leaf}'
            if mod == 'reduction':
                value = value[:, unfold_permutation(value.shape[1])]
            elif not v2:  # v1's norm precedes the reduction: 4C channels
                value = value[unfold_permutation(value.shape[0])]
            out[dst] = value
            continue
        for src, dst in (('embeddings.patch_embeddings.projection.',
                          'patch_embed.projection.'),
                         ('embeddings.norm.', 'patch_embed.norm.'),
                         ('layernorm.', 'norm3.')):
            if key.startswith(src):
                out[dst + key[len(src):]] = value
    return out


def _source(name: str, version: str, tmp_path) -> Tuple[H.Tensors,
                                                        H.Tensors]:
    """``(file tensors of the layout, transformers' saved base tensors)``
    for one class and writer: ``'5.25'`` its save_pretrained file,
    ``'4.57'`` that file plus the buffers 4.57 also saves (recorded),
    ``'state_dict-5'`` ``model.state_dict()`` of transformers 5."""
    model = H.build_hf(name)
    saved = H.save_folder(model, str(tmp_path / name))
    base = H.strip(saved, PREFIX[name])
    if version == '5.25':
        return saved, base
    if version == '4.57':
        extra = {k: official_relative_position_index(WINDOW)
                 for k, _, _ in F.EXTRA_IN_4_57[name]}
        return dict(saved, **extra), base
    assert version == 'state_dict-5'
    return dict(model.state_dict()), base


CASES = [(n, '5.25') for n in CLASSES] + [
    ('SwinModel', '4.57'), ('SwinForImageClassification', '4.57'),
    ('SwinForMaskedImageModeling', '4.57'), ('SwinModel', 'state_dict-5'),
    ('SwinForImageClassification', 'state_dict-5')]


@pytest.mark.parametrize('name', CLASSES)
def test_recorded_layout_is_what_transformers_saves(name, tmp_path):
    """The fixture is transformers 5.25's own output (names, shapes,
    dtypes, files, config fields); 4.57 adds exactly v1's index buffers
    (recorded), and 5.x ``state_dict()`` is the recorded module naming."""
    model = H.build_hf(name)
    folder = tmp_path / 'saved'
    saved = H.save_folder(model, str(folder))
    assert sorted(H.rows(saved)) == sorted(H.saved_layout(name))
    config = json.loads((folder / 'config.json').read_text())
    assert {k: config[k] for k in H.saved_config(name)} == \
        H.saved_config(name)
    files = F.SAVED['Swinv2Model' if _v2(name) else 'SwinModel']['files']
    assert tuple(sorted(os.listdir(folder))) == files
    if _v2(name):
        assert name in F.SAME_IN_4_57
    else:
        blocks = [k for k, _, _ in H.saved_layout(name)
                  if k.endswith('relative_position_bias_table')]
        n = WINDOW * WINDOW
        assert F.EXTRA_IN_4_57[name] == tuple(
            (k.replace('bias_table', 'index'), (n, n), 'int64')
            for k in blocks)
        pre = PREFIX[name]
        live = [(k[len(pre):], s, d) for k, s, d in
                H.rows(model.state_dict())
                if k.startswith(pre) and k != pre + 'embeddings.mask_token']
        assert live == list(F.STATE_DICT_5['SwinModel'])


@pytest.mark.parametrize('name,version', sweep(CASES, (
    'SwinForMaskedImageModeling-5.25', 'Swinv2ForImageClassification-5.25',
    'SwinModel-4.57', 'SwinForImageClassification-state_dict-5'),
    [f'{n}-{v}' for n, v in CASES]))
def test_converts_every_tensor_by_value(name, version, tmp_path):
    v2 = _v2(name)
    source, base = _source(name, version, tmp_path)
    conv = convert_checkpoint(source)
    # auto-detected, uniquely
    assert conv.format.name == ('hf_swinv2' if v2 else 'hf_swin')
    found = candidates(list(source))
    assert len(found) == 1 or found[1].rank < found[0].rank, found
    # every tensor by value (independent mapping of the saved names)
    want = expected(base, v2)
    assert set(conv.state_dict) == set(want)
    for key, value in want.items():
        assert conv.state_dict[key].dtype == value.dtype, key
        assert torch.equal(conv.state_dict[key], value), key
    # q, k, v order, explicitly: rows [0:C] are the query, then key, value
    qkv = conv.state_dict['stages.1.blocks.1.attn.w_msa.qkv.weight']
    q, k, v = qkv.chunk(3)
    p = 'encoder.layers.1.blocks.1.attention.self.'
    assert torch.equal(q, base[p + 'query.weight'])
    assert torch.equal(k, base[p + 'key.weight'])
    assert torch.equal(v, base[p + 'value.weight'])
    if v2:
        assert 'stages.1.blocks.1.attn.w_msa.qkv.bias' not in conv.state_dict
    # every source key accounted for; drops named with their reason
    report = conv.report
    assert sorted(r.old for r in report.kept + report.aliases +
                  report.dropped) == sorted(source)
    dropped = {r.old: r.reason for r in report.dropped}
    for key, why in dropped.items():
        assert not why.startswith('outside'), (key, why)
        if key.startswith('classifier.'):
            assert 'classifier' in why
        elif key.endswith('relative_position_index'):
            assert 'rebuilds it' in why
        else:
            assert key.startswith(('decoder.', 'swin.embeddings.mask_token',
                                   'swinv2.embeddings.mask_token')), key
    assert len(dropped) == len(source) - len(H.strip(source, PREFIX[name])) \
        + (8 if version == '4.57' else 0) + (1 if 'Masked' in name else 0)
    # the arguments the weights imply
    meta = conv.meta['swin']
    assert meta['embed_dims'] == SW['embed_dim']
    assert meta['depths'] == SW['depths']
    assert meta['num_heads'] == SW['num_heads']
    assert meta['window_size'] == (None if v2 else WINDOW)  # no config
    # strict-loads into the shipped config's backbone: the never-pretrained
    # keys (fresh norms 0-2, rebuilt buffers) are the only ones missing
    model = backbone(v2)
    result = model.load_state_dict(conv.state_dict, strict=False)
    assert not result.unexpected_keys
    assert set(result.missing_keys) == never_pretrained(model)
    if not v2:  # mmpretrain V2 deletes its buffers from what it loads
        own = model.state_dict()
        model.load_state_dict(dict(conv.state_dict, **{
            k: own[k] for k in never_pretrained(model)}), strict=True)


def _grid(x: torch.Tensor, hw) -> torch.Tensor:
    """``(B, H*W, C)`` -> ``(B, C, H, W)``."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *hw)


def _features(model, v2: bool, img: torch.Tensor):
    """``(outputs, per-stage output before merging, after merging)`` of
    the target backbone (stage outputs caught by hooks)."""
    before, after = {}, {}
    hooks = []
    for i, stage in enumerate(model.stages):
        if v2:
            def blocks(mod, args, out, i=i):
                before[i] = _grid(out[0], out[1])
            hooks.append(stage.register_forward_hook(blocks))
            if stage.downsample is not None:
                def merged(mod, args, out, i=i):
                    after[i - 1] = _grid(out[0], out[1])
                hooks.append(stage.downsample.register_forward_hook(merged))
        else:
            def both(mod, args, out, i=i):
                x_down, down_hw, x, hw = out
                before[i] = _grid(x, hw)
                if mod.downsample is not None:
                    after[i] = _grid(x_down, down_hw)
            hooks.append(stage.register_forward_hook(both))
    with torch.no_grad():
        outs = model(img)
    for h in hooks:
        h.remove()
    return outs, before, after


@pytest.mark.parametrize('name', ['SwinModel', 'Swinv2Model'])
def test_features_equal_transformers(name, tmp_path):
    """Every stage's ``reshaped_hidden_states`` (after the patch merging,
    and before it), and the final layernorm = norm3 output, equal
    transformers' within 1e-4; the fresh norms 0-2 are LayerNorms with
    weight 1, bias 0 of the stage outputs."""
    v2 = _v2(name)
    hf_model = H.build_hf(name)
    saved = H.save_folder(hf_model, str(tmp_path / name))
    model = backbone(v2)
    conv = convert_checkpoint(saved)
    model.load_state_dict(conv.state_dict, strict=False)
    img = torch.randn(2, 3, SIZE, SIZE,
                      generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = hf_model(img, output_hidden_states=True)
        # the stage outputs before merging: transformers' encoder flag
        # (SwinBackbone's), which Swinv2Model does not pass on
        ref_before = hf_model.encoder(
            *hf_model.embeddings(img), output_hidden_states=True,
            output_hidden_states_before_downsampling=True)
    outs, before, after = _features(model, v2, img)
    diffs = {}
    for i in range(3):  # after merging: reshaped_hidden_states[1..3]
        diffs[f'merged{i}'] = H.max_abs(after[i],
                                        ref.reshaped_hidden_states[i + 1])
    for i in range(4):  # the stage outputs before merging
        hf_stage = ref_before.reshaped_hidden_states[i + 1]
        diffs[f'stage{i}'] = H.max_abs(before[i], hf_stage)
        if i < 3:  # fresh norm_i: a plain LayerNorm
            normed = nnf.layer_norm(hf_stage.permute(0, 2, 3, 1),
                                    hf_stage.shape[1:2]).permute(0, 3, 1, 2)
            diffs[f'out{i}'] = H.max_abs(outs[i], normed)
    last = ref.last_hidden_state  # transformers' final layernorm = norm3
    diffs['out3'] = H.max_abs(outs[3], _grid(last, outs[3].shape[2:]))
    MAX_ABS[name] = max(diffs.values())
    print(f'\n{name}: max |diff| vs transformers {diffs}')
    assert max(diffs.values()) < 1e-4, diffs
    assert ref.last_hidden_state.abs().max() > 0.1  # not a vacuous compare


def _folder(name: str, tmp_path, **config_changes) -> str:
    folder = str(tmp_path / f'{name}-folder')
    H.save_folder(H.build_hf(name), folder)
    if config_changes:
        path = os.path.join(folder, 'config.json')
        with open(path) as f:
            config = json.load(f)
        config.update(config_changes)
        with open(path, 'w') as f:
            json.dump(config, f)
    return folder


@pytest.mark.parametrize('name', ['SwinForImageClassification',
                                  'Swinv2ForImageClassification'])
def test_folder_converts_and_initialises_the_shipped_backbone(
        name, tmp_path, capsys):
    """A save_pretrained folder: ``mmconv convert`` writes a file that
    ``torch.load(weights_only=True)`` reads and the backbone loads; the
    config's window reaches the report (Swin V2, whose weights do not
    say it); ``SelfSupPretrained`` initialises the shipped config's
    backbone from the folder itself."""
    from mmconv.cli import main
    from mmconv.init import SelfSupPretrainedInit
    v2 = _v2(name)
    folder = _folder(name, tmp_path)
    dst = str(tmp_path / 'out.pth')
    assert main(['convert', folder, dst]) == 0
    printed = capsys.readouterr().out
    assert ('hf_swinv2' if v2 else 'hf_swin') in printed
    out = torch.load(dst, weights_only=True)
    assert out['meta']['swin']['window_size'] == WINDOW
    if v2:
        assert f'config.json: window_size={WINDOW}' in printed
    model = backbone(v2)
    result = model.load_state_dict(out['state_dict'], strict=False)
    assert not result.unexpected_keys
    assert set(result.missing_keys) == never_pretrained(model)
    fresh = backbone(v2)
    SelfSupPretrainedInit(checkpoint=folder)(fresh)
    state = fresh.state_dict()
    for key, value in out['state_dict'].items():
        assert torch.equal(state[key], value), key


def test_config_that_does_not_describe_the_weights_is_refused(tmp_path,
                                                              capsys):
    from mmconv.cli import main
    folder = _folder('SwinModel', tmp_path, num_heads=[3, 6, 12, 24])
    dst = tmp_path / 'out.pth'
    capsys.readouterr()  # transformers' own progress bar
    assert main(['convert', folder, str(dst)]) == 5
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert 'num_heads=[3, 6, 12, 24] but the weights have [1, 2, 4, 8]' \
        in err
    assert not dst.exists()


def test_swin_folder_into_convnext_config_is_refused(tmp_path):
    """One line, and the ConvNeXt keeps every tensor it had."""
    from mmconv.init import SelfSupPretrainedInit
    folder = _folder('SwinForImageClassification', tmp_path)
    model = H.build_backbone(CONVNEXT, dict(
        arch=dict(depths=[1, 1, 2, 1], channels=[8, 16, 24, 32])),
        drop=('drop_path_rate', ))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConversionError) as err:
        SelfSupPretrainedInit(checkpoint=folder)(model)
    msg = str(err.value)
    assert '\n' not in msg
    assert 'only 0/' in msg and 'format hf_swin' in msg, msg
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_lone_weight_files(tmp_path, capsys):
    """A lone ``model.safetensors`` (no config.json: Swin V2's window is
    then not known, and said so) and a ``.pth`` of transformers 5's
    ``model.state_dict()`` convert to the same tensors as their folders."""
    from mmconv.cli import main
    model = H.build_hf('Swinv2ForImageClassification')
    folder = tmp_path / 'v2'
    H.save_folder(model, str(folder))
    lone = tmp_path / 'lone'
    lone.mkdir()
    os.link(folder / 'model.safetensors', lone / 'model.safetensors')
    capsys.readouterr()
    for src, name in ((folder, 'folder.pth'),
                      (lone / 'model.safetensors', 'lone.pth')):
        assert main(['convert', str(src), str(tmp_path / name)]) == 0
    printed = capsys.readouterr().out
    assert 'window_size=not recorded' in printed
    by_folder = torch.load(tmp_path / 'folder.pth', weights_only=True)
    by_file = torch.load(tmp_path / 'lone.pth', weights_only=True)
    assert by_folder['meta']['swin']['window_size'] == WINDOW
    assert by_file['meta']['swin']['window_size'] is None
    assert by_file['state_dict'].keys() == by_folder['state_dict'].keys()
    assert all(torch.equal(v, by_folder['state_dict'][k])
               for k, v in by_file['state_dict'].items())
    # transformers 5: torch.save(model.state_dict()) (module names)
    v1 = H.build_hf('SwinModel')
    H.save_folder(v1, str(tmp_path / 'v1'))
    torch.save(v1.state_dict(), tmp_path / 'v1.pth')
    for src, name in ((tmp_path / 'v1', 'v1-folder.pth'),
                      (tmp_path / 'v1.pth', 'v1-sd.pth')):
        assert main(['convert', str(src), str(tmp_path / name)]) == 0
    a = torch.load(tmp_path / 'v1-folder.pth', weights_only=True)
    b = torch.load(tmp_path / 'v1-sd.pth', weights_only=True)
    assert a['state_dict'].keys() == b['state_dict'].keys()
    assert all(torch.equal(v, b['state_dict'][k])
               for k, v in a['state_dict'].items())
