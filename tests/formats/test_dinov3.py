# Copyright (c) mmconv contributors. All rights reserved.
"""DINOv3 ViT sources (official files, eval teacher checkpoint, timm,
transformers) -> ViTDet: detection, the masked K bias, equivalence with
timm's DINOv3 after loading the raw file, refusals, every released size.

Files in the official layout are built from timm modules (random weights)
and the names recorded in :mod:`tests.fixtures.dinov3_layouts`; the builder
checks its output against the recorded layout."""
from typing import Dict, Optional

import pytest
import torch

from mmconv.errors import MMConvError
from mmconv.models import ViTDet
from mmconv.models.vit import rope_periods
from mmconv.pipeline import convert_state_dict
from tests.fixtures import dinov3_layouts as L

timm = pytest.importorskip('timm')

Tensors = Dict[str, torch.Tensor]

#: arch -> ViTDet arguments of the released model (the table of
#: /work/notes/dinov3_backbone.md), at full depth.
ARCH_ARGS = {
    'vits16': dict(embed_dim=384, depth=12, num_heads=6, mlp_ratio=4,
                   mlp='mlp'),
    'vits16plus': dict(embed_dim=384, depth=12, num_heads=6, mlp_ratio=4,
                       mlp='swiglu_unpacked'),
    'vitb16': dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4,
                   mlp='mlp'),
    'vitl16': dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4,
                   mlp='mlp'),
    'vitl16_sat493m': dict(embed_dim=1024, depth=24, num_heads=16,
                           mlp_ratio=4, mlp='mlp'),
    'vitl16plus': dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4,
                       mlp='swiglu_unpacked'),
    'vith16plus': dict(embed_dim=1280, depth=32, num_heads=20, mlp_ratio=4,
                       mlp='swiglu_unpacked'),
    'vit7b16': dict(embed_dim=4096, depth=40, num_heads=32, mlp_ratio=2,
                    mlp='swiglu_unpacked', qkv_bias=False),
}


def vitdet(arch: str, depth: Optional[int] = None, **overrides) -> ViTDet:
    """ViTDet of a released arch in global mode (the official function)."""
    args = dict(ARCH_ARGS[arch])
    if depth is not None:
        args['depth'] = depth
    args.update(patch_size=16, layer_scale=1e-5,
                norm_cfg=dict(type='LN', eps=1e-5), use_abs_pos=False,
                use_rope=True, with_cls_token=True, num_reg_tokens=4,
                final_norm=True, window_size=0, global_attn_indexes=(),
                use_rel_pos=False)
    args.update(overrides)
    return ViTDet(**args).eval()


def timm_model(arch: str, depth: int, qkvb: bool = True, seed: int = 0,
               device: str = 'cpu') -> torch.nn.Module:
    """timm's DINOv3 model of ``arch`` at ``depth``, random weights (no
    zero bias or unit scale can hide a wrong mapping)."""
    kwargs = dict(depth=depth, num_classes=0)
    name = L.TIMM_NAMES[arch.replace('_sat493m', '')]
    if name is None:  # ViT-L+: timm's ViT-L with the official SwiGLU
        name = 'vit_large_patch16_dinov3'
        kwargs.update(swiglu_mlp=True, swiglu_align_to=8)
    if qkvb and arch != 'vit7b16':
        name += '_qkvb'
    torch.manual_seed(seed)
    with torch.device(device):
        model = timm.create_model(name, pretrained=False, **kwargs).eval()
    if device == 'cpu':
        with torch.no_grad():
            for param in model.parameters():
                param.normal_(0, 0.05)
    return model


def official_state_dict(ref: torch.nn.Module, arch: str,
                        k_bias: bool = True, mask: bool = True) -> Tensors:
    """The official ``DinoVisionTransformer`` state dict holding ``ref``'s
    weights: ``storage_tokens``, ``ls1/ls2.gamma``, SwiGLU ``w1/w2/w3``,
    ``qkv.bias = [q; k; v]`` with a random K third (masked by
    ``bias_mask``, as in the released files), ``mask_token``,
    ``rope_embed.periods``, ``local_cls_norm`` where the arch has it.
    Checked against the recorded layout."""
    facts = L.OFFICIAL[arch]
    out: Tensors = {}
    timm_sd = ref.state_dict()
    dim = timm_sd['cls_token'].shape[-1]
    meta = timm_sd['cls_token'].is_meta
    depth = len({k.split('.')[1] for k in timm_sd if k.startswith('blocks.')})
    gen = torch.Generator().manual_seed(7)
    for key, value in timm_sd.items():
        if key in ('reg_token', ):
            key = 'storage_tokens'
        key = key.replace('gamma_1', 'ls1.gamma').replace(
            'gamma_2', 'ls2.gamma').replace('mlp.fc1_g', 'mlp.w1').replace(
                'mlp.fc1_x', 'mlp.w2')
        out[key] = value
    swiglu = any(k.startswith('mlp.w1') for k, _, _ in facts['block'])
    for i in range(depth):
        b = f'blocks.{i}.'
        if swiglu:
            for part in ('weight', 'bias'):
                out[f'{b}mlp.w3.{part}'] = out.pop(f'{b}mlp.fc2.{part}')
        q = out.pop(b + 'attn.q_bias', None)
        v = out.pop(b + 'attn.v_bias', None)
        if q is not None:
            k = torch.randn(q.shape, generator=gen) if k_bias and not meta \
                else torch.zeros_like(q)
            out[b + 'attn.qkv.bias'] = torch.cat([q, k, v])
            if mask:
                bias_mask = torch.ones(3 * dim, device=q.device)
                bias_mask[dim:2 * dim] = 0
                out[b + 'attn.qkv.bias_mask'] = bias_mask
    device = 'meta' if meta else 'cpu'
    out['mask_token'] = torch.zeros(1, dim, device=device)
    heads = L.OFFICIAL[arch]['num_heads']
    out['rope_embed.periods'] = rope_periods(dim // heads).to(device)
    if any(k.startswith('local_cls_norm') for k, _, _ in facts['top']):
        out['local_cls_norm.weight'] = torch.ones(dim, device=device)
        out['local_cls_norm.bias'] = torch.zeros(dim, device=device)
    _check_layout(out, arch, depth, mask)
    return out


def _check_layout(sd: Tensors, arch: str, depth: int, mask: bool) -> None:
    """``sd`` has exactly the recorded names and shapes of ``arch``."""
    facts = L.OFFICIAL[arch]
    want = {k: s for k, s, _ in facts['top']}
    for i in range(depth):
        want.update({f'blocks.{i}.{k}': s for k, s, _ in facts['block']
                     if mask or not k.endswith('bias_mask')})
    got = {k: tuple(v.shape) for k, v in sd.items()}
    assert got == want


def reference(ref: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm's normed last block as a map (= the official
    ``get_intermediate_layers(reshape=True)``)."""
    depth = len(ref.blocks)
    with torch.no_grad():
        return ref.forward_intermediates(
            x, indices=[depth - 1], norm=True, output_fmt='NCHW',
            intermediates_only=True)[0]


def load_raw(model: ViTDet, checkpoint, tmp_path, name='ckpt.pth', **kw):
    """``SelfSupPretrained`` from the raw file (or folder) into
    ``model``."""
    from mmconv.init import SelfSupPretrainedInit
    if not isinstance(checkpoint, str):
        path = str(tmp_path / name)
        torch.save(checkpoint, path)
        checkpoint = path
    init = SelfSupPretrainedInit(checkpoint=checkpoint, **kw)
    init(model)
    return init


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


# --- detection ---------------------------------------------------------------
def test_every_source_is_detected_without_a_file_name():
    ref = timm_model('vits16', 1)
    official = official_state_dict(ref, 'vits16')
    teacher = {'backbone.' + k: v for k, v in official.items()}
    teacher['dino_head.mlp.0.weight'] = torch.zeros(8, 384)
    teacher['ibot_head.mlp.0.weight'] = torch.zeros(8, 384)
    plain = timm_model('vits16', 1, qkvb=False).state_dict()
    cases = {'dinov3_vit': official, 'timm_dinov3': ref.state_dict()}
    for name, sd in cases.items():
        assert convert_state_dict(sd).format.name == name
    assert convert_state_dict(teacher).format.name == 'dinov3_vit'
    assert convert_state_dict(plain).format.name == 'timm_dinov3'


# --- the masked K bias -------------------------------------------------------
def test_masked_k_bias_is_zeroed_and_matters(tmp_path):
    ref = timm_model('vits16', 2)
    sd = official_state_dict(ref, 'vits16')
    conv = convert_state_dict(sd)
    bias = conv.state_dict['blocks.0.attn.qkv.bias']
    stored = sd['blocks.0.attn.qkv.bias']
    assert stored[384:768].abs().min() > 0  # the file's K third
    assert torch.equal(bias[384:768], torch.zeros(384))
    assert torch.equal(bias[:384], stored[:384])
    assert torch.equal(bias[768:], stored[768:])
    changed = {c.key: c.what for c in conv.changed}
    assert 'bias_mask' in changed['blocks.1.attn.qkv.bias']
    dropped = {r.old: r.reason for r in conv.report.dropped}
    assert 'bias_mask' in dropped['blocks.0.attn.qkv.bias_mask']
    assert 'training only' in dropped['mask_token']
    # carried as stored, the K bias changes the function
    x = torch.randn(1, 3, 64, 96)
    model = vitdet('vits16', depth=2)
    model.load_state_dict(dict(conv.state_dict, **{
        f'blocks.{i}.attn.qkv.bias': sd[f'blocks.{i}.attn.qkv.bias']
        for i in range(2)}))
    with torch.no_grad():
        stored_out, = model(x)
    model.load_state_dict(conv.state_dict)
    with torch.no_grad():
        out, = model(x)
    want = reference(ref, x)
    assert max_abs(out, want) < 1e-4
    assert max_abs(stored_out, want) > 100 * max_abs(out, want) + 1e-5


def test_k_bias_without_mask_is_kept():
    # a training run with mask_k_bias=False: the K bias is effective
    ref = timm_model('vits16', 1)
    sd = official_state_dict(ref, 'vits16', mask=False)
    conv = convert_state_dict(sd)
    assert torch.equal(conv.state_dict['blocks.0.attn.qkv.bias'],
                       sd['blocks.0.attn.qkv.bias'])


def test_a_mask_that_is_not_the_k_mask_is_refused():
    sd = official_state_dict(timm_model('vits16', 1), 'vits16')
    sd['blocks.0.attn.qkv.bias_mask'] = torch.ones(1152)
    with pytest.raises(MMConvError, match='not the DINOv3 K-bias mask'):
        convert_state_dict(sd)


# --- raw file -> SelfSupPretrained -> the official function ------------------
@pytest.mark.parametrize('arch', ['vits16', 'vits16plus'])
def test_raw_official_file_computes_the_official_function(arch, tmp_path):
    ref = timm_model(arch, 2)
    model = vitdet(arch, depth=2)
    init = load_raw(model, official_state_dict(ref, arch), tmp_path,
                    name=f'dinov3_{arch}_pretrain_lvd1689m-00000000.pth')
    assert init.format_name == 'dinov3_vit'
    assert init.loaded and len(init.loaded) == init.total
    for size in [(224, 224), (160, 96)]:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            out, = model(x)
        assert max_abs(out, reference(ref, x)) < 1e-4


def test_eval_teacher_checkpoint(tmp_path):
    ref = timm_model('vitb16', 1)
    sd = official_state_dict(ref, 'vitb16')
    teacher = {'backbone.' + k: v for k, v in sd.items()}
    teacher['dino_head.mlp.0.weight'] = torch.randn(16, 768)
    teacher['ibot_head.last_layer.weight'] = torch.randn(16, 16)
    model = vitdet('vitb16', depth=1)
    init = load_raw(model, {'teacher': teacher}, tmp_path,
                    name='teacher_checkpoint.pth')
    assert init.format_name == 'dinov3_vit'
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        out, = model(x)
    assert max_abs(out, reference(ref, x)) < 1e-4
    reasons = {r.old: r.reason for r in init.result.report.dropped}
    assert 'head' in reasons['dino_head.mlp.0.weight']
    assert 'head' in reasons['ibot_head.last_layer.weight']
    assert 'training only' in reasons['backbone.mask_token']


@pytest.mark.parametrize('qkvb', [True, False])
def test_timm_files_load_into_a_model_with_qkv_bias(qkvb, tmp_path):
    ref = timm_model('vits16', 2, qkvb=qkvb)
    model = vitdet('vits16', depth=2)
    init = load_raw(model, ref.state_dict(), tmp_path)
    assert init.format_name == 'timm_dinov3'
    assert 'blocks.0.attn.qkv.bias' in init.loaded
    bias = model.blocks[0].attn.qkv.bias.detach()
    assert torch.equal(bias[384:768], torch.zeros(384))
    if not qkvb:
        assert torch.equal(bias, torch.zeros(1152))
    x = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        out, = model(x)
    assert max_abs(out, reference(ref, x)) < 1e-4


def _hf_model(gated: bool, depth: int = 2):
    """transformers' DINOv3ViTModel (random weights, S widths)."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel
    torch.manual_seed(0)
    config = DINOv3ViTConfig(
        hidden_size=384, num_hidden_layers=depth, num_attention_heads=6,
        intermediate_size=1536, use_gated_mlp=gated, num_register_tokens=4,
        layerscale_value=1e-5, image_size=224, patch_size=16)
    model = DINOv3ViTModel(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.05)
    return model


@pytest.mark.parametrize('gated', [False, True])
def test_transformers_folder_computes_the_same_function(gated, tmp_path):
    pytest.importorskip('transformers')
    hf = _hf_model(gated)
    folder = str(tmp_path / 'hf')
    hf.save_pretrained(folder)
    model = vitdet('vits16plus' if gated else 'vits16', depth=2)
    init = load_raw(model, folder, tmp_path)
    assert init.format_name == ('hf_dinov3_vit_gated' if gated
                                else 'hf_dinov3_vit')
    assert len(init.loaded) == init.total  # all but the periods
    assert 'rope_embed.periods' in init.never_pretrained
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        out, = model(x)
        hidden = hf(pixel_values=x).last_hidden_state[:, 5:]
    want = hidden.reshape(1, 6, 8, 384).permute(0, 3, 1, 2)
    assert max_abs(out, want) < 1e-4
    assert init.result.meta['vit']['num_heads'] == 6
    # a lone model.safetensors (no config.json beside it) converts the same
    import shutil
    lone = tmp_path / 'lone'
    lone.mkdir()
    shutil.copy(f'{folder}/model.safetensors', lone / 'model.safetensors')
    again = vitdet('vits16plus' if gated else 'vits16', depth=2)
    load_raw(again, str(lone / 'model.safetensors'), tmp_path)
    with torch.no_grad():
        assert torch.equal(again(x)[0], out)


# --- refusals ----------------------------------------------------------------
def _refused(model, sd, tmp_path) -> str:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(MMConvError) as err:
        load_raw(model, sd, tmp_path)
    message = str(err.value)
    assert '\n' not in message
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), \
        'the model was loaded partly'
    return message


def test_another_size_is_refused(tmp_path):
    sd = official_state_dict(timm_model('vits16', 1), 'vits16')
    message = _refused(vitdet('vitb16', depth=1), sd, tmp_path)
    assert 'another size' in message


def test_deeper_file_into_shallower_model_is_refused(tmp_path):
    sd = official_state_dict(timm_model('vits16', 2), 'vits16')
    message = _refused(vitdet('vits16', depth=1), sd, tmp_path)
    assert 'blocks.1.' in message and 'more blocks' in message


def test_swiglu_file_into_mlp_model_is_refused(tmp_path):
    # S+ w3 (384, 1536) has the shape of S fc2: the names must decide
    sd = official_state_dict(timm_model('vits16plus', 1), 'vits16plus')
    assert sd['blocks.0.mlp.w3.weight'].shape == \
        vitdet('vits16', depth=1).blocks[0].mlp.fc2.weight.shape
    message = _refused(vitdet('vits16', depth=1), sd, tmp_path)
    assert 'SwiGLU' in message and "mlp='swiglu_unpacked'" in message


def test_model_with_absolute_position_embedding_is_refused(tmp_path):
    sd = official_state_dict(timm_model('vits16', 1), 'vits16')
    model = ViTDet(embed_dim=384, depth=1, num_heads=6,
                   global_attn_indexes=(), layer_scale=1e-5,
                   with_cls_token=True, num_reg_tokens=4)
    message = _refused(model, sd, tmp_path)
    assert 'RoPE' in message and 'use_rope=True' in message


def test_nonzero_qkv_bias_into_model_without_bias_is_refused(tmp_path):
    sd = official_state_dict(timm_model('vits16', 1), 'vits16')
    message = _refused(vitdet('vits16', depth=1, qkv_bias=False), sd,
                       tmp_path)
    assert 'qkv_bias=True' in message


def test_vit_with_position_embedding_is_not_dinov3():
    sd = timm_model('vits16', 1).state_dict()
    sd['pos_embed'] = torch.zeros(1, 196, 384)
    with pytest.raises(MMConvError, match='absolute position embedding'):
        convert_state_dict(sd, 'timm_dinov3')


# --- every released size -----------------------------------------------------
@pytest.mark.parametrize('arch', [a for a in L.OFFICIAL if a != 'vit7b16'])
def test_every_released_vit_converts_and_loads(arch):
    # real widths, one block (the full depths repeat the same block)
    ref = timm_model(arch, 1)
    conv = convert_state_dict(official_state_dict(ref, arch))
    model = vitdet(arch, depth=1)
    model.load_state_dict(conv.state_dict, strict=True)
    assert conv.meta['vit']['embed_dim'] == ARCH_ARGS[arch]['embed_dim']
    assert conv.meta['vit']['num_heads'] == ARCH_ARGS[arch]['num_heads']
    assert conv.meta['vit']['mlp'] == ARCH_ARGS[arch]['mlp']
    if arch == 'vitl16_sat493m':
        dropped = {r.old: r.reason for r in conv.report.dropped}
        assert 'training only' in dropped['local_cls_norm.weight']
    if arch in ('vith16plus', 'vitl16plus'):
        x = torch.randn(1, 3, 64, 48)
        with torch.no_grad():
            out, = model(x)
        assert max_abs(out, reference(ref, x)) < 1e-4


@pytest.mark.parametrize('arch', ['vit7b16', 'vith16plus'])
def test_big_models_full_depth_on_meta(arch):
    # the full-depth file converts and loads into the full model
    ref = timm_model(arch, ARCH_ARGS[arch]['depth'], device='meta')
    sd = official_state_dict(ref, arch)
    if arch != 'vit7b16':  # the K-bias mask is read: real (small) tensors
        sd = {k: torch.zeros(v.shape) if k.endswith('bias_mask') or
              k.endswith('qkv.bias') else v for k, v in sd.items()}
        third = sd['blocks.0.attn.qkv.bias_mask'].shape[0] // 3
        for k in sd:
            if k.endswith('bias_mask'):
                sd[k] = torch.ones(3 * third)
                sd[k][third:2 * third] = 0
    conv = convert_state_dict(sd)
    with torch.device('meta'):
        model = vitdet(arch)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in conv.state_dict.items()}
    assert got == want
    model.load_state_dict(conv.state_dict, strict=True, assign=True)
    dropped = {r.old for r in conv.report.dropped}
    if arch == 'vit7b16':
        assert {'mask_token', 'local_cls_norm.weight'} <= dropped
        assert 'blocks.0.attn.qkv.bias' not in conv.state_dict


# --- the command line --------------------------------------------------------
def test_convert_writes_a_vitdet_file_that_converts_again_unchanged(
        tmp_path, capsys):
    from mmconv.cli import main
    ref = timm_model('vits16', 2)
    src = str(tmp_path / 'dinov3_vits16_pretrain_lvd1689m-08c60483.pth')
    torch.save(official_state_dict(ref, 'vits16'), src)
    dst = str(tmp_path / 'vitdet.pth')
    assert main(['convert', src, dst]) == 0
    out = capsys.readouterr().out
    assert 'dinov3:   embed_dim=384 depth=2 num_heads=6 mlp=mlp' in out
    saved = torch.load(dst, weights_only=True)
    args = dict(saved['meta']['vit'])
    model = ViTDet(**args, window_size=0, global_attn_indexes=(),
                   use_rel_pos=False).eval()
    model.load_state_dict(saved['state_dict'], strict=True)
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        got, = model(x)
    assert max_abs(got, reference(ref, x)) < 1e-4
    again = convert_state_dict(saved['state_dict'])
    assert again.format.name == 'vitdet_dinov3' and not again.changed
    assert all(torch.equal(again.state_dict[k], v)
               for k, v in saved['state_dict'].items())


# --- the ops this family declares ------------------------------------------
def test_declared_ops():
    from mmconv.ops import (ConcatenateWithZeros, FitsTarget, OpContext,
                            ZeroBias, ZeroPart, apply)
    bias = torch.arange(1., 7.)
    zeroed = apply(ZeroPart(1, 3), bias)
    assert zeroed.tolist() == [1., 2., 0., 0., 5., 6.]
    assert bias.tolist() == [1., 2., 3., 4., 5., 6.]  # input untouched
    assert apply(ZeroPart(1, 3), zeroed) is zeroed  # nothing to change
    with pytest.raises(MMConvError, match='equal parts'):
        apply(ZeroPart(1, 3), torch.ones(4))
    fused = apply(ConcatenateWithZeros(1), torch.ones(2),
                  torch.full((2, ), 2.))
    assert fused.tolist() == [1., 1., 0., 0., 2., 2.]
    assert apply(ZeroBias(), torch.ones(5, 3)).tolist() == [0.] * 5
    for op in (ZeroPart(1, 3), ConcatenateWithZeros(1), ZeroBias(),
               FitsTarget()):
        assert op.reverse() is None and op.describe()
    check = FitsTarget('{key} missing', '{key} {shape} vs {target}',
                       allow_zero=True)
    ones = torch.ones(3)
    assert check([ones], OpContext('k', target_shape=(3, ))) is ones
    with pytest.raises(MMConvError, match=r'k \[3\] vs \[4\]'):
        check([ones], OpContext('k', target_shape=(4, )))
    with pytest.raises(MMConvError, match='k missing'):
        check([ones], OpContext('k'))
    zeros = torch.zeros(3)
    assert check([zeros], OpContext('k')) is zeros
