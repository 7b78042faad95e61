# Copyright (c) mmconv contributors. All rights reserved.
"""DINOv3 Vision Transformers (official, timm, transformers, converted) ->
mmconv's ``ViTDet`` with RoPE and tokens.

The ``dinov3_vit`` family (:data:`DINOV3_FAMILY`); canonical names: ViTDet's
(timm's) with ``use_rope=True, use_abs_pos=False, with_cls_token=True,
num_reg_tokens=4``. Rules: ``*_RULES`` (:data:`DINOV3_FORMATS`); K bias:
:data:`MASKED_K_BIAS`; timm's missing bias: :data:`TIMM_DERIVE`; module
checks: :data:`FIT_RULES`. Users: README, "DINOv3 ViTs -> ViTDet with RoPE".
"""
import re
from typing import Any, Dict, Tuple

from ..errors import ConversionError
from ..ops import (Concatenate, ConcatenateWithZeros, FitsTarget, OpContext,
                   When, ZeroBias, ZeroPart)
from ..spec import (Conversion, Family, Request, Rule, SourceFormat,
                    check_shapes, register)
from .vit import embedding_and_depth

__all__ = [
    'DINOV3_FAMILY', 'DINOV3_FORMATS', 'DINOV3_NUM_HEADS', 'MASKED_K_BIAS',
    'FIT_RULES', 'TIMM_DERIVE', 'dinov3_architecture', 'infer_dinov3'
]

#: Attention heads of the released DINOv3 ViTs by width
#: (dinov3/hub/backbones.py): S/S+ 384: 6, B 768: 12, L/L+ 1024: 16,
#: H+ 1280: 20, 7B 4096: 32 (head dim 64 except 7B: 128). Files with the
#: RoPE periods imply the head dim themselves (``4 * len(periods)``).
DINOV3_NUM_HEADS: Dict[int, int] = {384: 6, 768: 12, 1024: 16, 1280: 20,
                                    4096: 32}


# --- the masked K bias ------------------------------------------------------
def _k_bias_masked(ctx: OpContext) -> bool:
    """Whether the source stores a ``bias_mask`` for this ``qkv.bias``
    (``mask_k_bias=True``, every released ViT); refuse a mask that is not
    DINOv3's K mask (ones, zeros on the middle third)."""
    key = ctx.source_keys[0] if ctx.source_keys else ctx.key
    mask = ctx.source.get(key + '_mask')
    if mask is None:
        return False
    third = mask.shape[0] // 3
    expected = mask.new_ones(mask.shape)
    expected[third:2 * third] = 0
    if mask.shape[0] % 3 or not bool((mask == expected).all()):
        raise ConversionError(
            f'{key}_mask is not the DINOv3 K-bias mask (ones with zeros on '
            'the middle third): not a released DINOv3 layout')
    return True


#: ``qkv.bias`` ``[q; k; v]``: the K third set to zero where the file has
#: ``bias_mask`` (the official ``LinearKMaskedBias`` multiplies the bias by
#: it, so the effective K bias is zero; carrying it as stored would rotate a
#: non-zero K bias with RoPE and change the outputs).
MASKED_K_BIAS = When(
    _k_bias_masked,
    ZeroPart(1, 3, what='K third of qkv.bias set to zero (the official '
             'model multiplies it by bias_mask = 0)'),
    what='the file has bias_mask')

# --- rule tables ------------------------------------------------------------
_BB = r'^(?:backbone\.)?'
_BLK = _BB + r'blocks\.(\d+)\.'
_TOP = (r'(cls_token|patch_embed\.proj\.(?:weight|bias)|'
        r'rope_embed\.periods|norm\.(?:weight|bias))$')

# fmt: off
#: facebookresearch/dinov3 ``DinoVisionTransformer`` (flat, or ``backbone.*``
#: of the eval teacher checkpoint); SwiGLU ``w1``/``w2``/``w3`` map one to
#: one (ViTDet ``mlp='swiglu_unpacked'``, no packing).
OFFICIAL_RULES: Tuple[Rule, ...] = (
    (r'^(?:dino_head|ibot_head)\.', None, 'DINOv3 DINO / iBOT head (training)'),
    (_BB + r'mask_token$', None, 'mask token (masked-image-modelling input, training only)'),
    (_BB + r'local_cls_norm\.', None, 'local-crop class-token norm (7B, SAT ViT-L: training only, never used in eval)'),
    (_BB + r'cls_norm\.', None, 'class/register-token norm (untied; the detector outputs patch tokens only)'),
    (_BLK + r'attn\.qkv\.bias_mask$', None, 'bias_mask buffer (zeros on the K third): applied to qkv.bias'),
    Rule(_BLK + r'attn\.qkv\.bias$', r'blocks.\1.attn.qkv.bias', 'DINOv3 attention qkv bias', ops=(MASKED_K_BIAS, )),
    (_BLK + r'mlp\.w1\.', r'blocks.\1.mlp.fc1_g.', 'DINOv3 SwiGLU w1 (gate) = ViTDet mlp.fc1_g'),
    (_BLK + r'mlp\.w2\.', r'blocks.\1.mlp.fc1_x.', 'DINOv3 SwiGLU w2 = ViTDet mlp.fc1_x'),
    (_BLK + r'mlp\.w3\.', r'blocks.\1.mlp.fc2.', 'DINOv3 SwiGLU w3 = ViTDet mlp.fc2'),
    (_BLK, r'blocks.\1.', 'DINOv3 transformer block'),
    (_BB + r'storage_tokens$', 'reg_token', 'DINOv3 storage (register) tokens'),
    (_BB + _TOP, r'\1', 'DINOv3 class token / patch embedding / RoPE periods / final norm'),
)

_TB = r'^blocks\.(\d+)\.'
TIMM_RULES: Tuple[Rule, ...] = (
    (r'^(?:head|fc_norm|head_drop)\.', None, 'classification head (timm)'),
    (r'^mask_token$', None, 'mask token (training only)'),
    (r'^rope\.', None, 'timm RoPE buffers (recomputed by the model)'),
    Rule(_TB + r'attn\.(?P<part>q|v)_bias$', r'blocks.\1.attn.qkv.bias',
         'timm q_bias / v_bias fused into qkv.bias with the zero k bias',
         ops=(ConcatenateWithZeros(1, what='[q_bias; 0; v_bias]'), ), parts=('q', 'v')),
    (_TB + r'gamma_1$', r'blocks.\1.ls1.gamma', 'timm gamma_1 = LayerScale ls1'),
    (_TB + r'gamma_2$', r'blocks.\1.ls2.gamma', 'timm gamma_2 = LayerScale ls2'),
    (_TB, r'blocks.\1.', 'timm DINOv3 block (SwiGLU fc1_g / fc1_x / fc2 as in ViTDet)'),
    (r'^(cls_token|reg_token|patch_embed\.proj\.(?:weight|bias)|norm\.(?:weight|bias))$', r'\1',
     'class / register tokens, patch embedding, final norm'),
)

#: timm's default DINOv3 variants store no q/v bias (the released ones are
#: zero, timm ``_qkvb`` variants keep them): a zero ``qkv.bias`` is added.
TIMM_DERIVE: Tuple[Rule, ...] = (
    Rule(r'^blocks\.(\d+)\.attn\.qkv\.weight$', r'blocks.\1.attn.qkv.bias',
         'zero qkv bias (timm DINOv3 without q/v bias)',
         ops=(ZeroBias('zero qkv bias: timm stores none, the released q/v '
                       'biases are zero and the k bias is masked'), )),
)

_HL = r'^(?:model\.)?layer\.(\d+)\.'


def _hf_rules(gated: bool) -> Tuple[Rule, ...]:
    """transformers ``DINOv3ViTModel`` -> canonical (``gated``: SwiGLU)."""
    mlp = ((_HL + r'mlp\.gate_proj\.', r'blocks.\1.mlp.fc1_g.', 'gate_proj (SwiGLU gate, w1) = fc1_g'),
           (_HL + r'mlp\.up_proj\.', r'blocks.\1.mlp.fc1_x.', 'up_proj (SwiGLU w2) = fc1_x'))
    if not gated:
        mlp = ((_HL + r'mlp\.up_proj\.', r'blocks.\1.mlp.fc1.', 'up_proj = mlp.fc1'), )
    return (
        (r'^embeddings\.mask_token$', None, 'mask token (training only)'),
        (r'^embeddings\.cls_token$', 'cls_token', 'class token'),
        (r'^embeddings\.register_tokens$', 'reg_token', 'register (storage) tokens'),
        (r'^embeddings\.patch_embeddings\.(weight|bias)$', r'patch_embed.proj.\1', 'patch embedding'),
        Rule(_HL + r'attention\.(?P<part>q|k|v)_proj\.weight$', r'blocks.\1.attn.qkv.weight',
             'attention q, k, v projections fused into qkv (q, k, v order)',
             ops=(Concatenate(0), ), parts=('q', 'k', 'v')),
        Rule(_HL + r'attention\.(?P<part>q|v)_proj\.bias$', r'blocks.\1.attn.qkv.bias',
             'attention q, v biases fused into qkv.bias with the zero k bias (key_bias=False)',
             ops=(ConcatenateWithZeros(1, what='[q_proj.bias; 0; v_proj.bias]'), ), parts=('q', 'v')),
        (_HL + r'attention\.o_proj\.', r'blocks.\1.attn.proj.', 'attention output projection'),
        (_HL + r'layer_scale1\.lambda1$', r'blocks.\1.ls1.gamma', 'LayerScale 1 (lambda1)'),
        (_HL + r'layer_scale2\.lambda1$', r'blocks.\1.ls2.gamma', 'LayerScale 2 (lambda1)'),
        (_HL + r'norm(1|2)\.', r'blocks.\1.norm\2.', 'block norms'),
    ) + mlp + (
        (_HL + r'mlp\.down_proj\.', r'blocks.\1.mlp.fc2.', 'down_proj = mlp.fc2'),
        (r'^norm\.(weight|bias)$', r'norm.\1', 'final norm'),
    )


#: A file ``mmconv convert`` wrote from an official one (ViTDet names,
#: with the RoPE periods): converted again unchanged.
CONVERTED_RULES: Tuple[Rule, ...] = (
    (r'^(cls_token|reg_token|patch_embed\.proj\.(?:weight|bias)|'
     r'rope_embed\.periods|norm\.(?:weight|bias))$', r'\1',
     'ViTDet DINOv3 tokens / patch embedding / RoPE periods / final norm'),
    (r'^blocks\.(\d+)\.', r'blocks.\1.', 'ViTDet DINOv3 block'),
)

HF_RULES = _hf_rules(False)
HF_GATED_RULES = _hf_rules(True)

_SHAPE = ('DINOv3 file: {key} {shape} vs {target} in the model: another '
          'size (set embed_dim, depth, mlp_ratio, num_heads to the '
          "file's; `mmconv convert` prints them)")
#: Checks against the module a result is loaded into (``SelfSupPretrained``
#: applies them with the module's shapes): refuse what does not fit.
FIT_RULES: Tuple[Rule, ...] = (
    Rule(r'^rope_embed\.periods$', None, 'RoPE', ops=(FitsTarget(
        'DINOv3 file: its positions are RoPE (rope_embed.periods {shape}) '
        'but the model has no RoPE (an absolute position embedding?): '
        'build ViTDet with use_rope=True, use_abs_pos=False',
        'DINOv3 file: rope_embed.periods {shape} vs {target} in the model: '
        'another head dimension (set num_heads to the file\'s)'), )),
    Rule(r'^cls_token$', None, 'class token', ops=(FitsTarget(
        'DINOv3 file: the model has no class token: build ViTDet with '
        'with_cls_token=True', _SHAPE), )),
    Rule(r'^reg_token$', None, 'register tokens', ops=(FitsTarget(
        'DINOv3 file: reg_token {shape} but the model has no register '
        'tokens: build ViTDet with num_reg_tokens set to the file\'s',
        'DINOv3 file: reg_token {shape} vs {target} in the model: another '
        'number of register tokens (num_reg_tokens)'), )),
    Rule(r'^blocks\.\d+\.mlp\.fc1_[gx]\.', None, 'SwiGLU', ops=(FitsTarget(
        'DINOv3 file: {key} {shape}: the file\'s MLP is a SwiGLU (w1, w2, '
        "w3) and the model's is not: build ViTDet with "
        "mlp='swiglu_unpacked'", _SHAPE), )),
    Rule(r'^blocks\.\d+\.attn\.qkv\.bias$', None, 'qkv bias', ops=(FitsTarget(
        'DINOv3 file: {key} is not zero and the model has no qkv bias: '
        'build ViTDet with qkv_bias=True', _SHAPE, allow_zero=True), )),
    Rule(r'^blocks\.\d+\.', None, 'blocks', ops=(FitsTarget(
        'DINOv3 file: {key} is not in the model: the file has more blocks '
        "or another block layout (set depth / mlp to the file's; use "
        'out_indices for an intermediate layer)', _SHAPE), )),
    Rule(r'^norm\.', None, 'final norm', ops=(FitsTarget('', _SHAPE), )),
    Rule(r'^patch_embed\.', None, 'patch embedding', ops=(FitsTarget(
        'DINOv3 file: the model has no {key}', _SHAPE), )),
)
# fmt: on


# --- what the weights imply --------------------------------------------------
def _check_source(conv: Conversion, request: Request) -> None:
    """Refuse an input that is not a DINOv3 ViT though its keys look so
    (an EVA-style ViT with an absolute position embedding; transformers'
    ``key_bias=True``, whose K bias has no DINOv3 equivalent)."""
    pos = [k for k in conv.source if re.search(r'(?:^|\.)pos_embed$', k)]
    if pos:
        raise ConversionError(
            f'{pos[0]} in a {conv.format.title} file: a ViT with an absolute '
            'position embedding is not a DINOv3 ViT (RoPE only, no position '
            'embedding)')
    kbias = [k for k in conv.source if k.endswith('attention.k_proj.bias')]
    if kbias:
        raise ConversionError(
            f'{kbias[0]}: transformers DINOv3 with key_bias=True has no '
            'DINOv3 equivalent (the released models mask the K bias)')


def infer_dinov3(state_dict: Dict[str, Any]) -> Dict[str, Any]:
    """The ``ViTDet`` arguments a converted DINOv3 state dict implies.

    Raises:
        ConversionError: Not one complete, consistent DINOv3 ViT.
    """
    for key in ('patch_embed.proj.weight', 'blocks.0.attn.qkv.weight',
                'blocks.0.mlp.fc2.weight'):
        if key not in state_dict:
            raise ConversionError(f'no {key} after conversion: not a DINOv3 '
                                  f'ViT ({len(state_dict)} tensors)')
    dim, in_channels, patch, depth = embedding_and_depth(state_dict)
    swiglu = 'blocks.0.mlp.fc1_g.weight' in state_dict
    first = 'blocks.0.mlp.fc1_g.weight' if swiglu else \
        'blocks.0.mlp.fc1.weight'
    if first not in state_dict:
        raise ConversionError('no blocks.0.mlp.fc1 / fc1_g after conversion: '
                              'not a DINOv3 ViT')
    hidden = int(state_dict[first].shape[0])
    periods = state_dict.get('rope_embed.periods')
    if periods is not None:
        head_dim = 4 * int(periods.shape[0])
        if not head_dim or dim % head_dim:
            raise ConversionError(
                f'rope_embed.periods {list(periods.shape)} does not divide '
                f'embed_dim {dim} into heads')
        heads, why = dim // head_dim, 'the RoPE periods'
    elif dim in DINOV3_NUM_HEADS:
        heads, why = DINOV3_NUM_HEADS[dim], 'official model definition'
    else:
        heads, why = max(1, dim // 64), 'ASSUMED head_dim 64'
    reg = state_dict.get('reg_token')
    ratio = hidden / dim
    if int(dim * ratio) != hidden:
        ratio = (hidden + 0.5) / dim
    args = dict(embed_dim=dim, depth=depth, num_heads=heads,
                patch_size=patch, in_channels=in_channels, mlp_ratio=ratio,
                mlp='swiglu_unpacked' if swiglu else 'mlp',
                qkv_bias='blocks.0.attn.qkv.bias' in state_dict,
                layer_scale='blocks.0.ls1.gamma' in state_dict,
                with_cls_token='cls_token' in state_dict,
                num_reg_tokens=int(reg.shape[1]) if reg is not None else 0,
                final_norm='norm.weight' in state_dict,
                rope_periods=periods is not None, heads_from=why)
    check_shapes(state_dict, _expected(args, hidden),
                 f'DINOv3 ViT (embed_dim={dim}, depth={depth})')
    return args


def _expected(args: Dict[str, Any], hidden: int
              ) -> Dict[str, Tuple[int, ...]]:
    """Every tensor of the DINOv3 ViT ``args`` describe."""
    c, p = args['embed_dim'], args['patch_size']
    out: Dict[str, Tuple[int, ...]] = {
        'patch_embed.proj.weight': (c, args['in_channels'], p, p),
        'patch_embed.proj.bias': (c, ),
    }
    if args['with_cls_token']:
        out['cls_token'] = (1, 1, c)
    if args['num_reg_tokens']:
        out['reg_token'] = (1, args['num_reg_tokens'], c)
    if args['rope_periods']:
        out['rope_embed.periods'] = (c // args['num_heads'] // 4, )
    mlp = (('fc1_g', 'fc1_x') if args['mlp'] == 'swiglu_unpacked'
           else ('fc1', ))
    for i in range(args['depth']):
        b = f'blocks.{i}.'
        out.update({
            b + 'norm1.weight': (c, ), b + 'norm1.bias': (c, ),
            b + 'attn.qkv.weight': (3 * c, c),
            b + 'attn.proj.weight': (c, c), b + 'attn.proj.bias': (c, ),
            b + 'norm2.weight': (c, ), b + 'norm2.bias': (c, ),
            b + 'mlp.fc2.weight': (c, hidden), b + 'mlp.fc2.bias': (c, ),
        })
        for name in mlp:
            out[f'{b}mlp.{name}.weight'] = (hidden, c)
            out[f'{b}mlp.{name}.bias'] = (hidden, )
        if args['qkv_bias']:
            out[b + 'attn.qkv.bias'] = (3 * c, )
        if args['layer_scale']:
            out[b + 'ls1.gamma'] = (c, )
            out[b + 'ls2.gamma'] = (c, )
    if args['final_norm']:
        out['norm.weight'] = (c, )
        out['norm.bias'] = (c, )
    return out


def _vitdet_args(args: Dict[str, Any]) -> Dict[str, Any]:
    """The ``ViTDet`` keyword arguments (global attention, the official
    function)."""
    return dict(
        patch_size=args['patch_size'], embed_dim=args['embed_dim'],
        depth=args['depth'], num_heads=args['num_heads'],
        mlp_ratio=args['mlp_ratio'], mlp=args['mlp'],
        qkv_bias=args['qkv_bias'],
        layer_scale=1e-5 if args['layer_scale'] else None,
        norm_cfg=dict(type='LN', eps=1e-5), use_abs_pos=False,
        use_rope=True, rope_base=100.0,
        with_cls_token=args['with_cls_token'],
        num_reg_tokens=args['num_reg_tokens'],
        final_norm=args['final_norm'])


def dinov3_architecture(conv: Conversion, request: Request) -> None:
    """Family step: check the result is one DINOv3 ViT and record the
    ``ViTDet`` arguments it implies (``meta['vit']``, summary, hints)."""
    args = infer_dinov3(conv.state_dict)
    config = conv.entries.get('config') if isinstance(
        conv.entries, dict) else None
    heads = config.get('num_attention_heads') if isinstance(
        config, dict) else None
    if not args['rope_periods'] and isinstance(heads, int) and heads > 0:
        args.update(num_heads=heads, heads_from='config.json')
    vitdet = _vitdet_args(args)
    conv.meta['vit'] = dict(vitdet)
    ratio = round(args['mlp_ratio'], 6)
    conv.lines.append(
        f'dinov3:   embed_dim={args["embed_dim"]} depth={args["depth"]} '
        f'num_heads={args["num_heads"]} mlp={args["mlp"]} '
        f'mlp_ratio={ratio:g} qkv_bias={args["qkv_bias"]} '
        f'num_reg_tokens={args["num_reg_tokens"]} '
        f'periods={"kept" if args["rope_periods"] else "recomputed"}')
    if args['heads_from'] not in ('the RoPE periods', 'config.json'):
        conv.notes.append(
            f'num_heads={args["num_heads"]} is not recorded in these '
            f'weights ({args["heads_from"]})')
    conv.notes.append(
        'build ViTDet with use_rope=True, use_abs_pos=False, '
        "norm_cfg=dict(type='LN', eps=1e-5) and the tokens above; "
        'window_size=0 + use_rel_pos=False computes the official function, '
        'windowed blocks change it (README: DINOv3)')
    conv.hints = lambda dst: _hints(vitdet, dst)


def _hints(vitdet: Dict[str, Any], dst: str) -> str:
    """The config lines that use the converted file."""
    body = ', '.join(f'{k}={v!r}' for k, v in vitdet.items())
    return '\n'.join([
        "custom_imports = dict(imports=['mmconv'], "
        'allow_failed_imports=False)',
        f"model = dict(backbone=dict(type='ViTDet', {body},",
        "    window_size=0, use_rel_pos=False,",
        f"    init_cfg=dict(type='Pretrained', checkpoint='{dst}')))",
    ])


# --- declarations ------------------------------------------------------------
#: ``never_pretrained``: ViTDet's relative position tables and the RoPE
#: ``periods``, which timm and transformers files lack (the module computes
#: them: fp32, the same formula).
DINOV3_FAMILY = Family(
    'dinov3_vit', 'DINOv3 Vision Transformer (RoPE)',
    options=('select', 'prefix'), finish=(dinov3_architecture, ),
    targets=('mmdet', ),
    never_pretrained=(r'(?:^|\.)attn\.rel_pos_[hw]$',
                      r'^rope_embed\.periods$'),
    fit=FIT_RULES)

_B = r'^(?:backbone\.)?'

# fmt: off
DINOV3_FORMATS: Tuple[SourceFormat, ...] = (
    SourceFormat(
        'dinov3_vit', 'dinov3_vit', 'DINOv3 ViT (official backbone or eval teacher checkpoint)',
        rules=OFFICIAL_RULES,
        sentinels=(_B + r'storage_tokens$', _B + r'rope_embed\.periods$',
                   _B + r'blocks\.0\.attn\.qkv\.weight$', _B + r'patch_embed\.proj\.weight$'),
        containers=('teacher', ), surgery=(_check_source, ),
        released=('dinov3_vits16_pretrain_lvd1689m-08c60483.pth',
                  'dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth',
                  'dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth',
                  'dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth',
                  'dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth',
                  'dinov3_vitl16plus_pretrain_lvd1689m-46503df0.pth',
                  'dinov3_vith16plus_pretrain_lvd1689m-7c1da9a5.pth',
                  'dinov3_vit7b16_pretrain_lvd1689m-a955f4ea.pth',
                  'dinov3_vit7b16_pretrain_sat493m-a6675841.pth',
                  'teacher_checkpoint.pth'),
        source='facebookresearch/dinov3: hub/backbones.py loads the flat DinoVisionTransformer state dict (strict); train/train.py do_test saves {teacher: model_ema.state_dict()} = backbone.*, dino_head.*, ibot_head.*'),
    SourceFormat(
        'timm_dinov3', 'dinov3_vit', 'timm DINOv3 ViT (vit_*_patch16_dinov3[_qkvb])',
        rules=TIMM_RULES, derive=TIMM_DERIVE,
        sentinels=(r'^reg_token$', r'^blocks\.0\.gamma_1$', r'^blocks\.0\.attn\.qkv\.weight$',
                   r'^patch_embed\.proj\.weight$'),
        containers=('state_dict', 'model'), surgery=(_check_source, ),
        released=('vit_small_patch16_dinov3.lvd1689m', 'vit_base_patch16_dinov3_qkvb.lvd1689m'),
        source='timm/models/eva.py: Eva with rope_type=dinov3 (checkpoint_filter_fn drops periods, bias_mask, mask_token, local_cls_norm; splits qkv.bias into q_bias/v_bias)'),
    SourceFormat(
        'hf_dinov3_vit', 'dinov3_vit', 'transformers DINOv3ViTModel',
        rules=HF_RULES,
        sentinels=(r'^embeddings\.register_tokens$', r'^embeddings\.patch_embeddings\.weight$',
                   r'^(?:model\.)?layer\.0\.attention\.q_proj\.weight$',
                   r'^(?:model\.)?layer\.0\.layer_scale1\.lambda1$'),
        surgery=(_check_source, ),
        released=('facebook/dinov3-vits16-pretrain-lvd1689m', 'model.safetensors'),
        source='huggingface/transformers models/dinov3_vit (4.56+; save_pretrained layout identical in 4.57 and 5.x)'),
    SourceFormat(
        'hf_dinov3_vit_gated', 'dinov3_vit', 'transformers DINOv3ViTModel (use_gated_mlp)',
        rules=HF_GATED_RULES,
        sentinels=(r'^embeddings\.register_tokens$', r'^embeddings\.patch_embeddings\.weight$',
                   r'^(?:model\.)?layer\.0\.attention\.q_proj\.weight$',
                   r'^(?:model\.)?layer\.0\.layer_scale1\.lambda1$',
                   r'^(?:model\.)?layer\.0\.mlp\.gate_proj\.weight$'),
        surgery=(_check_source, ),
        released=('facebook/dinov3-vith16plus-pretrain-lvd1689m', 'facebook/dinov3-vit7b16-pretrain-lvd1689m'),
        source='huggingface/transformers models/dinov3_vit with use_gated_mlp=True (S+, L+, H+, 7B)'),
    SourceFormat(
        'vitdet_dinov3', 'dinov3_vit', 'ViTDet DINOv3 (converted by mmconv)',
        rules=CONVERTED_RULES,
        sentinels=(r'^reg_token$', r'^rope_embed\.periods$', r'^blocks\.0\.attn\.qkv\.weight$',
                   r'^patch_embed\.proj\.weight$'),
        surgery=(_check_source, ),
        released=('dinov3_vitb16_vitdet.pth', ),
        source='mmconv convert output ({state_dict, meta}) of a DINOv3 file'),
)
# fmt: on

register(DINOV3_FAMILY, *DINOV3_FORMATS)
