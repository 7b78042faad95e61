# Copyright (c) mmconv contributors. All rights reserved.
"""transformers ViT-family checkpoints -> ViTDet (issue 21), and the
position grid resampled to the module it is loaded into (issue 20).

Every recorded layout (tests/fixtures/hf_vit_layouts.py: transformers 5.25
and 4.57 ``save_pretrained`` files, 5.25 ``state_dict()``) is
auto-detected, converted with every source tensor arriving by value (the
q, k, v rows checked one by one) and strict-loaded into the ViTDet of the
shipped configs; models built by the installed transformers compute, as
ViTDet, the same patch features as transformers' own modules. Wrong sizes
and configs are refused in one line."""
import os
import re
import shutil
from typing import Any, Dict, Tuple

import pytest
import torch

from mmconv import ConversionError, convert_checkpoint
from mmconv.detect import candidates
from mmconv.ops import OpContext, ResampleGrid
from tests.fixtures import hf_vit_layouts as H
from tests.helpers.tiers import sweep

transformers = pytest.importorskip('transformers')

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, 'configs', 'vitdet')
VIT_B = 'mask-rcnn_vit-b-mae-selfsup-raw-pre_simple-fpn_lsj-100e_coco.py'
DINOV2_B = 'mask-rcnn_vit-b14-dinov2-selfsup-raw-pre_simple-fpn_lsj-100e_' \
    'coco.py'
DINOV2_REG = 'mask-rcnn_vit-b14-dinov2-reg4-selfsup-raw-pre_simple-fpn_' \
    'lsj-100e_coco.py'
DINOV2_S = 'mask-rcnn_vit-s14-dinov2-selfsup-raw-pre_simple-fpn_lsj-100e_' \
    'coco.py'

#: recorded class -> the format it must be detected as
FORMAT_OF = {
    'ViTModel': 'hf_vit', 'ViTForImageClassification': 'hf_vit',
    'ViTMAEModel': 'hf_vit', 'ViTMAEForPreTraining': 'hf_vit_mae',
    'Dinov2Model': 'hf_dinov2', 'Dinov2Model-swiglu': 'hf_dinov2',
    'Dinov2ForImageClassification': 'hf_dinov2',
    'Dinov2WithRegistersModel': 'hf_dinov2',
    'Dinov2WithRegistersForImageClassification': 'hf_dinov2',
}
#: recorded class -> the shipped config whose ViTDet it is loaded into
CONFIG_OF = {name: (VIT_B if fmt != 'hf_dinov2' else
                    DINOV2_REG if 'Registers' in name else DINOV2_B)
             for name, fmt in FORMAT_OF.items()}
#: a source key -> the reason its drop must give
DROPPED = {
    r'embeddings\.cls_token$': 'class token',
    r'embeddings\.mask_token$': 'mask token',
    r'embeddings\.register_tokens$': 'register tokens',
    r'pooler\.': 'pooler',
    r'^classifier\.': 'image classification head',
    r'^decoder\.mask_token$': 'MAE decoder mask token',
    r'^decoder\.(?!mask_token)': 'MAE decoder',
}
QKV = ('query', 'key', 'value')
QKV5 = ('q_proj', 'k_proj', 'v_proj')

#: largest absolute difference seen per case (printed with -s)
MAX_ABS: Dict[str, float] = {}


# --- helpers -----------------------------------------------------------------
def _layouts():
    """``(version, class, form, [(name, shape, dtype)])`` of every
    recorded layout."""
    out = []
    for version, classes in H.SAVED.items():
        for name in H.BUILD:
            if name in classes:
                out.append((version, name, 'saved',
                            classes[name]['tensors']))
    for name in H.SAME_IN_4_57:
        out.append(('4.57.6', name, 'saved',
                    H.SAVED['5.25.0'][name]['tensors']))
    for name, tensors in H.STATE_DICT_5.items():
        out.append(('5.25.0', name, 'state_dict',
                    tuple((k, s, 'float32') for k, s in tensors)))
    return out


LAYOUTS = _layouts()


def _config(version: str, name: str) -> Dict[str, Any]:
    entry = H.SAVED[version].get(name) or H.SAVED['5.25.0'][name]
    return entry['config']


def _synthetic(tensors, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Distinct random values with the recorded names, shapes, dtypes."""
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(tuple(s), generator=gen).to(getattr(torch, t))
            for k, s, t in tensors}


def vitdet_from_config(name: str, **args):
    """The shipped config's backbone with the given sizes, every block
    global, no relative positions (not pre-trained)."""
    from mmdet.registry import MODELS
    from mmengine.config import Config
    import mmconv.models  # noqa: F401 (registers ViTDet)
    cfg = Config.fromfile(os.path.join(CONFIGS, name)).model.backbone
    cfg.update(window_size=0, global_attn_indexes=(), use_rel_pos=False,
               init_cfg=None)
    cfg.update(args)
    return MODELS.build(cfg)


def _vitdet_args(meta: Dict[str, Any]) -> Dict[str, Any]:
    """ViTDet arguments of a conversion's ``meta['vit']``."""
    args = {k: meta[k] for k in ('img_size', 'patch_size', 'embed_dim',
                                 'depth', 'num_heads', 'mlp_ratio',
                                 'qkv_bias', 'mlp', 'final_norm')}
    args['layer_scale'] = 1e-5 if meta['layer_scale'] else None
    return args


def _part(old: str) -> Tuple[int, int]:
    """``(index, count)`` of a merged source key's part, or ``(-1, 0)``."""
    for parts in (QKV, QKV5, ('gate_proj', 'up_proj')):
        for i, part in enumerate(parts):
            if f'.{part}.' in old:
                return i, len(parts)
    return -1, 0


def assert_arrives_by_value(conv, source: Dict[str, torch.Tensor]) -> None:
    """Every source tensor is dropped with its reason or arrives by value:
    renamed as it is (the same tensor), ``position_embeddings`` without
    its class slot, q / k / v (and 5.x gate / up) as consecutive row blocks
    of the fused tensor in that order (transformers' convert scripts split
    ``qkv`` rows as ``[:C]``, ``[C:2C]``, ``[2C:]``)."""
    report, out = conv.report, conv.state_dict
    assert sorted(r.old for r in report.kept + report.aliases +
                  report.dropped) == sorted(source)
    for record in report.dropped:
        why = [w for p, w in DROPPED.items() if re.search(p, record.old)]
        assert why, f'{record.old} dropped: {record.reason}'
        assert record.reason.startswith(why[-1]) or why[-1] in \
            record.reason, (record.old, record.reason)
    fused = {}
    for record in report.kept + report.aliases:
        old, new = record.old, record.new
        tensor = source[old]
        index, count = _part(old)
        if index >= 0:
            rows = tensor.shape[0]
            assert out[new].shape[0] == rows * count, old
            assert torch.equal(out[new][index * rows:(index + 1) * rows],
                               tensor), old
            fused.setdefault(new, set()).add(index)
        elif new == 'pos_embed':
            assert torch.equal(out[new], tensor[:, 1:])
        else:
            assert out[new] is tensor, old
    assert all(parts == set(range(len(parts))) for parts in fused.values())


# --- the recorded layouts ---------------------------------------------------
@pytest.mark.parametrize('version,name,form,tensors', sweep(LAYOUTS, (
    '5.25.0-ViTModel-saved', '4.57.6-ViTMAEForPreTraining-saved',
    '4.57.6-Dinov2Model-swiglu-saved',
    '5.25.0-Dinov2WithRegistersForImageClassification-state_dict'),
    [f'{v}-{n}-{f}' for v, n, f, _ in LAYOUTS]))
def test_recorded_layout_converts_and_loads(version, name, form, tensors):
    source = _synthetic(tensors)
    conv = convert_checkpoint(dict(source))
    # auto-detected, uniquely
    assert conv.format.name == FORMAT_OF[name], conv.report.detection
    found = candidates(list(source))
    assert len(found) == 1 or found[1].rank < found[0].rank, found
    assert_arrives_by_value(conv, source)
    # the weights say what the recorded config says
    config = _config(version, name)
    meta = conv.meta['vit']
    assert meta['embed_dim'] == config['hidden_size']
    assert meta['depth'] == config['num_hidden_layers']
    assert meta['patch_size'] == config['patch_size']
    assert meta['img_size'] == config['image_size']
    assert meta['num_heads'] == config['num_attention_heads']  # table
    assert meta['layer_scale'] == (conv.format.name == 'hf_dinov2')
    assert meta['mlp'] == ('swiglu' if config.get('use_swiglu_ffn')
                           else 'mlp')
    # strict load into the shipped config's ViTDet
    model = vitdet_from_config(CONFIG_OF[name], **_vitdet_args(meta))
    result = model.load_state_dict(conv.state_dict, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_recorded_4x_and_5x_files_differ_only_in_the_mae_decoder():
    """What the fixture says about the two writers, and that the decoder
    names of both are dropped with the decoder's reason."""
    assert set(H.SAVED['4.57.6']) == {'ViTMAEForPreTraining'}
    old = {k for k, _, _ in H.SAVED['4.57.6']['ViTMAEForPreTraining'][
        'tensors']}
    new = {k for k, _, _ in H.SAVED['5.25.0']['ViTMAEForPreTraining'][
        'tensors']}
    assert {k for k in old ^ new if not k.startswith('decoder.')} == set()
    assert any('decoder.decoder_layers.0.' in k for k in old - new)
    assert any('decoder.decoder_encoder.layer.0.' in k for k in new - old)


@pytest.mark.skipif(transformers.__version__ != '5.25.0',
                    reason='the fixture records transformers 5.25.0')
@pytest.mark.parametrize('name', list(H.BUILD))
def test_fixture_is_what_installed_transformers_saves(name, tmp_path):
    from safetensors import safe_open
    model = _build(name)
    model.save_pretrained(str(tmp_path))
    recorded = H.SAVED['5.25.0'][name]
    assert sorted(os.listdir(tmp_path)) == list(recorded['files'])
    with safe_open(str(tmp_path / 'model.safetensors'), 'pt') as f:
        got = [(k, tuple(f.get_slice(k).get_shape()),
                str(f.get_tensor(k).dtype).replace('torch.', ''))
               for k in f.keys()]
    assert got == list(recorded['tensors'])
    import json
    config = json.loads((tmp_path / 'config.json').read_text())
    assert {k: config[k] for k in recorded['config']} == recorded['config']
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == \
        list(H.STATE_DICT_5[name])


# --- transformers' own modules as the reference ------------------------------
def _build(name: str, seed: int = 0, **extra):
    """The recorded class, every parameter random (norms around 1, the
    rest around 0, so that no mapping error hides behind an identity)."""
    model_cls, config_cls, kwargs = H.BUILD[name]
    config = getattr(transformers, config_cls)(**dict(kwargs, **extra))
    model = getattr(transformers, model_cls)(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if param.dim() == 1 and re.search(r'norm|lambda1', key):
                param.copy_(1 + 0.2 * noise)
            else:
                param.copy_(0.1 * noise)
    return model.eval()


def hf_features(model, img: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """transformers' own model on the patch tokens only (its embeddings'
    class / register tokens removed before the first layer, as ViTDet
    feeds none): ``(hidden_states[-1], last_hidden_state)`` as ``(B, C, h,
    w)``. MAE runs with ``mask_ratio=0`` and the identity shuffle."""
    base = model.base_model
    prefix = 1 + int(getattr(base.config, 'num_register_tokens', 0) or 0)
    embeddings = base.embeddings
    forward = embeddings.forward

    def patch_tokens(*args, **kwargs):
        out = forward(*args, **kwargs)
        if isinstance(out, tuple):  # ViTMAE: (embeddings, mask, ids)
            return (out[0][:, prefix:], ) + tuple(out[1:])
        return out[:, prefix:]

    extra = {}
    if 'vit_mae' in base.config.model_type:
        assert base.config.mask_ratio == 0.0
        tokens = (img.shape[-1] // base.config.patch_size)**2
        extra['noise'] = torch.arange(tokens, dtype=torch.float).expand(
            img.shape[0], tokens)
    embeddings.forward = patch_tokens
    try:
        with torch.no_grad():
            out = base(pixel_values=img, output_hidden_states=True, **extra)
    finally:
        del embeddings.forward
    grid = img.shape[-1] // base.config.patch_size

    def as_map(x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == grid * grid
        return x.reshape(x.shape[0], grid, grid, -1).permute(0, 3, 1, 2)

    return as_map(out.hidden_states[-1]), as_map(out.last_hidden_state)


def _source(model, form: str, tmp_path) -> Any:
    """The model as the user has it: a ``save_pretrained`` folder, a lone
    ``model.safetensors`` (no config.json beside it), or a ``.pth`` of
    transformers 5's ``model.state_dict()``, read by mmconv's loader."""
    from mmconv.fetching import load_source
    folder = tmp_path / 'folder'
    model.save_pretrained(str(folder))
    if form == 'folder':
        return load_source(str(folder))
    if form == 'safetensors':
        lone = tmp_path / 'lone'
        lone.mkdir()
        shutil.copy(folder / 'model.safetensors', lone)
        return load_source(str(lone / 'model.safetensors'))
    path = tmp_path / 'state_dict.pth'
    torch.save(model.state_dict(), str(path))
    return load_source(str(path))


FEATURE_CASES = [
    ('ViTModel', 'folder'), ('ViTModel', 'state_dict'),
    ('ViTForImageClassification', 'safetensors'),
    ('ViTMAEModel', 'folder'), ('ViTMAEForPreTraining', 'folder'),
    ('ViTMAEForPreTraining', 'state_dict'),
    ('Dinov2Model', 'folder'), ('Dinov2Model', 'safetensors'),
    ('Dinov2Model-swiglu', 'folder'), ('Dinov2Model-swiglu', 'state_dict'),
    ('Dinov2ForImageClassification', 'safetensors'),
    ('Dinov2WithRegistersModel', 'folder'),
    ('Dinov2WithRegistersModel', 'state_dict'),
]


@pytest.mark.parametrize('name,form', sweep(FEATURE_CASES, (
    'ViTModel-folder', 'ViTMAEForPreTraining-state_dict',
    'Dinov2Model-swiglu-folder', 'Dinov2WithRegistersModel-state_dict'),
    [f'{n}-{f}' for n, f in FEATURE_CASES]))
def test_features_equal_transformers(name, form, tmp_path):
    extra = {'mask_ratio': 0.0} if 'MAE' in name else {}
    model = _build(name, **extra)
    source = _source(model, form, tmp_path)
    conv = convert_checkpoint(source)
    assert conv.format.name == FORMAT_OF[name]
    sd = source['state_dict'] if 'state_dict' in source else source
    assert_arrives_by_value(conv, sd)
    meta = conv.meta['vit']
    assert meta['num_heads'] == model.config.num_attention_heads
    size = model.config.image_size
    img = torch.randn(2, 3, size, size,
                      generator=torch.Generator().manual_seed(1))
    hidden, last = hf_features(model, img)
    for final_norm, ref in ((False, hidden), (True, last)):
        args = dict(_vitdet_args(meta), final_norm=final_norm)
        vitdet = vitdet_from_config(CONFIG_OF[name], **args).eval()
        missing, unexpected = vitdet.load_state_dict(
            {k: v for k, v in conv.state_dict.items()
             if final_norm or not k.startswith('norm.')}, strict=True)
        assert not missing and not unexpected
        with torch.no_grad():
            (ours, ) = vitdet(img)
        assert ours.shape == ref.shape
        diff = (ours - ref).abs().max().item()
        MAX_ABS[f'{name}-{form}-{"last" if final_norm else "hidden"}'] = \
            diff
        print(f'\n{name} ({form}) vs transformers '
              f'{"last_hidden_state" if final_norm else "hidden_states[-1]"}'
              f': max abs diff {diff:.2e}')
        assert diff < 1e-4


@pytest.mark.parametrize('name', ['ViTModel', 'Dinov2Model'])
def test_a_wrong_qkv_order_would_not_pass(name):
    """The fused rows are q, k, v: a source with q and k swapped converts
    to other rows and other features (the order is checked, not silent)."""
    model = _build(name)
    sd = dict(model.state_dict())
    img = torch.randn(1, 3, model.config.image_size,
                      model.config.image_size)
    _, ref = hf_features(model, img)
    swapped = dict(sd)
    for key in sd:
        if '.q_proj.' in key:
            other = key.replace('.q_proj.', '.k_proj.')
            swapped[key], swapped[other] = sd[other], sd[key]
    right, wrong = convert_checkpoint(sd), convert_checkpoint(swapped)
    qkv = right.state_dict['blocks.0.attn.qkv.weight']
    c = qkv.shape[1]
    layer = 'encoder.layer' if 'Dinov2' in name else 'layers'
    assert torch.equal(qkv[:c], sd[f'{layer}.0.attention.q_proj.weight'])
    assert not torch.equal(qkv, wrong.state_dict['blocks.0.attn.qkv.weight'])
    outs = []
    for conv in (right, wrong):
        vitdet = vitdet_from_config(CONFIG_OF[name], **dict(
            _vitdet_args(conv.meta['vit']), final_norm=True)).eval()
        vitdet.load_state_dict(conv.state_dict, strict=True)
        with torch.no_grad():
            outs.append((vitdet(img)[0] - ref).abs().max().item())
    assert outs[0] < 1e-4 < 1e-2 < outs[1], outs


def test_merge_part_missing_is_refused():
    sd = _synthetic(H.SAVED['5.25.0']['Dinov2Model']['tensors'])
    del sd['encoder.layer.1.attention.attention.key.weight']
    with pytest.raises(ConversionError,
                       match=r'^blocks\.1\.attn\.qkv\.weight: the checkpoint '
                       r'has the query, value part\(s\) but not key'):
        convert_checkpoint(sd)


# --- config.json ----------------------------------------------------------
def test_config_supplies_the_heads_and_must_describe_the_weights(tmp_path):
    """Heads come from config.json when it is there (6 heads at width 192,
    which the official table would call 3), else from the table; a
    config.json of other weights is refused in one line."""
    from mmconv.fetching import load_source
    model = _build('Dinov2Model', num_attention_heads=6)
    model.save_pretrained(str(tmp_path / 'folder'))
    folder = load_source(str(tmp_path / 'folder'))
    conv = convert_checkpoint(folder)
    assert conv.meta['vit']['num_heads'] == 6
    assert any('num_attention_heads of config.json' in n
               for n in conv.notes)
    assert any('confirms the weights' in n for n in conv.notes)
    lone = convert_checkpoint(dict(folder['state_dict']))
    assert lone.meta['vit']['num_heads'] == 3
    assert not any('config.json' in n for n in lone.notes)
    # the 6 heads are the model's: features equal with them only
    img = torch.randn(1, 3, 56, 56)
    _, ref = hf_features(model, img)
    diffs = []
    for heads in (6, 3):
        vitdet = vitdet_from_config(DINOV2_B, **dict(
            _vitdet_args(conv.meta['vit']), num_heads=heads)).eval()
        vitdet.load_state_dict(conv.state_dict, strict=True)
        with torch.no_grad():
            diffs.append((vitdet(img)[0] - ref).abs().max().item())
    assert diffs[0] < 1e-4 < diffs[1]
    for key, value, fragment in (
            ('hidden_size', 384, 'hidden_size=384 (the weights: 192)'),
            ('num_hidden_layers', 12, 'num_hidden_layers=12'),
            ('patch_size', 16, 'patch_size=16 (the weights: 14)'),
            ('num_attention_heads', 5, 'does not divide the width 192'),
            ('use_swiglu_ffn', True, 'use_swiglu_ffn=True')):
        bad = dict(folder, config=dict(folder['config'], **{key: value}))
        with pytest.raises(ConversionError) as err:
            convert_checkpoint(bad)
        assert fragment in str(err.value) and '\n' not in str(err.value)


def test_vit_config_notes_the_layer_norm_eps(tmp_path):
    from mmconv.fetching import load_source
    model = _build('ViTForImageClassification')
    model.save_pretrained(str(tmp_path))
    conv = convert_checkpoint(load_source(str(tmp_path)))
    assert conv.format.name == 'hf_vit'
    assert any('layer_norm_eps=1e-12' in n for n in conv.notes)
    reasons = conv.report.dropped_by_reason()
    assert any(r.startswith('image classification head') for r in reasons)


def test_cli_converts_a_folder(tmp_path, capsys):
    from mmconv.cli import main
    model = _build('Dinov2WithRegistersModel')
    model.save_pretrained(str(tmp_path / 'dinov2'))
    dst = str(tmp_path / 'vitdet.pth')
    assert main(['convert', str(tmp_path / 'dinov2'), dst]) == 0
    out = capsys.readouterr().out
    assert 'hf_dinov2' in out and 'register tokens' in out
    saved = torch.load(dst, weights_only=True)
    assert saved['meta']['vit']['num_heads'] == 3
    sd = model.state_dict()
    qkv = saved['state_dict']['blocks.1.attn.qkv.weight']
    assert torch.equal(qkv[192:384],
                       sd['encoder.layer.1.attention.k_proj.weight'])


# --- loading into a module: refusals and the resampled grid ------------------
def _init(checkpoint: str, **kwargs):
    from mmconv.init import SelfSupPretrainedInit
    return SelfSupPretrainedInit(checkpoint=checkpoint, **kwargs)


def test_dinov2_s_folder_into_vit_b_config_is_refused(tmp_path):
    """A DINOv2-S (384 wide, patch 14) folder into the shipped ViT-B/16
    config: one line naming the shapes, nothing loaded."""
    model = _build('Dinov2Model', hidden_size=384, num_attention_heads=6)
    model.save_pretrained(str(tmp_path))
    backbone = vitdet_from_config(VIT_B, window_size=14,
                                  global_attn_indexes=(2, 5, 8, 11),
                                  use_rel_pos=True)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(ConversionError) as err:
        _init(str(tmp_path))(backbone)
    msg = str(err.value)
    assert '\n' not in msg
    assert 'hf_dinov2' in msg and 'shape mismatches' in msg
    assert 'patch_embed.proj.weight (384, 3, 14, 14) vs (768, 3, 16, 16)' \
        in msg
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_resample_grid_op():
    """Bicubic as ViTDet's own interpolate_pos_embed; anything it cannot
    resample is left as it is."""
    from mmconv.models.vit import interpolate_pos_embed
    op = ResampleGrid()
    pos = torch.randn(1, 16, 8)
    ctx = OpContext('pos_embed', ('pos_embed', ), {}, (1, 37 * 37, 8),
                    (1, 16, 8))
    out = op([pos], ctx)
    assert torch.equal(out, interpolate_pos_embed(pos, 4, 37).reshape(
        1, -1, 8))
    assert op.describe(ctx).startswith(
        'resample_pos_embed: 4x4 -> 37x37 patch grid, bicubic')
    assert op.reverse() is None
    assert torch.equal(ResampleGrid(size=37)([pos], OpContext('x')), out)
    for shape in ((1, 37 * 37, 9), (1, 37 * 19, 8), (37 * 37, 8),
                  (1, 16, 8)):
        assert op([pos], OpContext('pos_embed', target_shape=shape)) is pos
    assert op([pos], OpContext('pos_embed')) is pos
    half = op([pos.half()], ctx)
    assert half.dtype == torch.float16 and half.shape == (1, 1369, 8)


def test_teacher_checkpoint_from_a_smaller_grid_is_resampled(tmp_path):
    """Issue 20: a DINOv2 teacher_checkpoint.pth trained at a smaller size
    (4x4 grid here) into the shipped DINOv2 config (518 px: 37x37) was
    refused ('pos_embed ... vs (1, 1369, C)'); it is resampled at load
    time as ViTDet would resize it at run time."""
    from mmconv.models.vit import interpolate_pos_embed
    from tests.fixtures import vit_layouts as L
    layout = L.build_dinov2_teacher()
    path = str(tmp_path / 'teacher_checkpoint.pth')
    torch.save(layout.checkpoint, path)
    args = {k: layout.vitdet[k] for k in (
        'patch_size', 'embed_dim', 'depth', 'num_heads', 'mlp_ratio',
        'qkv_bias', 'layer_scale', 'mlp')}
    big = vitdet_from_config(DINOV2_B, final_norm=True, **args).eval()
    assert big.pos_grid == (37, 37)
    init = _init(path)
    init(big)
    assert init.format_name == 'dinov2' and init.loaded
    assert len(init.loaded) == init.total
    grid = layout.img_size // layout.vitdet['patch_size']
    want = interpolate_pos_embed(layout.expected['pos_embed'], grid,
                                 37).reshape(1, 37 * 37, -1)
    assert torch.equal(big.pos_embed.detach(), want)
    for key, value in big.state_dict().items():
        if key != 'pos_embed':
            assert torch.equal(value, layout.expected[key]), key
    assert any(f'resample_pos_embed: {grid}x{grid} -> 37x37 patch grid' in n
               for n in init.result.notes)
    # the same features as the small-grid model resizing at run time
    small = vitdet_from_config(DINOV2_B, final_norm=True,
                               img_size=layout.img_size, **args).eval()
    small.load_state_dict(convert_checkpoint(layout.checkpoint).state_dict)
    img = torch.randn(1, 3, 518, 518)
    with torch.no_grad():
        assert torch.allclose(big(img)[0], small(img)[0], atol=1e-5)


def test_hf_224_folder_into_the_518_config_is_resampled(tmp_path):
    """The issue's shapes: a transformers DINOv2-S saved at 224 px
    (``pos_embed`` (1, 256, 384) once its class slot is cut) into the
    shipped ViT-S/14 config (518 px: (1, 1369, 384)), 2 blocks deep."""
    from mmconv.models.vit import interpolate_pos_embed
    model = _build('Dinov2Model', image_size=224, hidden_size=384,
                   num_attention_heads=6)
    model.save_pretrained(str(tmp_path))
    backbone = vitdet_from_config(DINOV2_S, depth=2)
    assert backbone.pos_embed.shape == (1, 1369, 384)
    init = _init(str(tmp_path))
    init(backbone)
    assert init.format_name == 'hf_dinov2'
    assert len(init.loaded) == init.total
    pos = model.embeddings.position_embeddings.detach()[:, 1:]
    assert pos.shape == (1, 256, 384)
    assert torch.equal(backbone.pos_embed.detach(), interpolate_pos_embed(
        pos, 16, 37).reshape(1, 1369, 384))
    assert any('16x16 -> 37x37' in n for n in init.result.notes)


def test_a_grid_that_cannot_be_resampled_is_refused(tmp_path):
    """A non-square model grid (37x19) is not guessed: refused, naming the
    shapes."""
    from tests.fixtures import vit_layouts as L
    layout = L.build_dinov2_teacher()
    path = str(tmp_path / 'teacher_checkpoint.pth')
    torch.save(layout.checkpoint, path)
    args = {k: layout.vitdet[k] for k in (
        'patch_size', 'embed_dim', 'depth', 'num_heads', 'mlp_ratio',
        'qkv_bias', 'layer_scale', 'mlp')}
    backbone = vitdet_from_config(DINOV2_B, img_size=(518, 266), **args)
    with pytest.raises(ConversionError) as err:
        _init(path)(backbone)
    assert 'pos_embed (1, 16, 192) vs (1, 703, 192)' in str(err.value)
