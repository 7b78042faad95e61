# Copyright (c) mmconv contributors. All rights reserved.
"""Self-supervised Vision Transformers (MAE, DINO, iBOT, MoCo v3, DINOv2,
mmpretrain, timm, transformers) -> mmconv's ``ViTDet`` backbone.

The ``vit`` family (:data:`VIT_FAMILY`; target module, whose timm names are
the canonical ones: :data:`VIT_MODULE`). Rules: ``*_RULES``
(:data:`VIT_FORMATS`, :data:`HF_VIT_FORMATS`); ``pos_embed`` slots:
:data:`STRIP_CLASS_SLOT`, :data:`STRIP_PREFIX_SLOTS`; heads:
:data:`NUM_HEADS`. Users: README, "Self-supervised Vision Transformers".
"""
import math
import re
from typing import Any, Dict, Optional, Tuple

from ..errors import ConversionError
from ..ops import Concatenate, OpContext, ResampleGrid, SliceTokens
from ..spec import (Conversion, Family, Request, Rule, SourceFormat,
                    TargetModule, register)

__all__ = [
    'VIT_FAMILY', 'VIT_FORMATS', 'NUM_HEADS', 'STRIP_CLASS_SLOT',
    'STRIP_PREFIX_SLOTS', 'require_pos_embed', 'note_prefix_slots',
    'check_block_chunks', 'vit_architecture', 'infer_vit',
    'embedding_and_depth'
]

#: Attention heads of the official models by width (the weights do not
#: record them: ``qkv`` is ``(3C, C)`` for any head count): timm / DeiT /
#: MAE / DINO / iBOT / DINOv2 ViT-Ti, S, B, L, H (MAE ViT-H/14: 1280, 16
#: heads), g (DINOv2 giant2: 1536, 24 heads).
NUM_HEADS: Dict[int, int] = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16,
                             1536: 24}
#: Formats whose official models differ from :data:`NUM_HEADS`: MoCo v3's
#: ``vit_small`` (moco-v3 vits.py) and mmpretrain's ``mocov3-small`` arch
#: have 12 heads of 32 channels.
FORMAT_NUM_HEADS: Dict[str, Dict[int, int]] = {'mocov3_vit': {384: 12}}

# --- the pos_embed slots --------------------------------------------------
def _tokens(source: Dict[str, Any], name: str) -> int:
    """Number of tokens of the source's ``*name`` parameter (0 if none)."""
    pattern = re.compile(rf'(?:^|\.){name}$')
    for key, value in source.items():
        if pattern.search(key) and value.dim() == 3:
            return int(value.shape[1])
    return 0


def _prefix_tokens(ctx: OpContext) -> int:
    """timm / mmpretrain: the class token plus timm's ``reg_token``s of the
    source (``ctx.source``)."""
    return _tokens(ctx.source, 'cls_token') + _tokens(ctx.source,
                                                      'reg_token')


#: ``pos_embed`` ``(1, 1 + g*g, C)`` -> ``(1, g*g, C)``: the official MAE,
#: DINO, iBOT, MoCo v3 and DINOv2 models add exactly one position slot, the
#: class token's (DINOv2's register tokens are inserted after the position
#: embedding and have none).
STRIP_CLASS_SLOT = SliceTokens(1, 'class-token', 'strip_class_slot')
#: timm / mmpretrain: ``pos_embed`` holds ``num_prefix_tokens`` slots
#: (class token + ``reg_token``) first, or none with ``no_embed_class``
#: (timm's DINOv2 ports with registers); which one is read from the grid,
#: which must be square.
STRIP_PREFIX_SLOTS = SliceTokens(_prefix_tokens, 'class/register-token',
                                 'strip_prefix_slots', optional=True)

# --- rule groups ---------------------------------------------------------
# Canonical names: ViTDet's, which are timm's ``VisionTransformer`` names
# (its ``pos_embed`` covers the patch tokens only).
_DROP_TOKENS = (
    ('cls_token$', 'class token (the detector feeds patch tokens only)'),
    ('reg_token$', 'register tokens (timm reg_token; not used by the '
     'detector)'),
    ('register_tokens$', 'register tokens (DINOv2 *_reg4; not used by the '
     'detector)'),
    ('mask_token$', 'mask token (masked-image-modelling input)'),
    ('masked_embed$', 'iBOT mask embedding (masked-image-modelling input)'),
    ('head\\.', 'classification head slot'),
    ('fc_norm\\.', 'norm of the pooled feature (timm global_pool)'),
)


def _timm_body(prefix: str, what: str,
               slots: SliceTokens = STRIP_CLASS_SLOT) -> Tuple[Rule, ...]:
    """Rules for a timm-layout ViT under the regex ``prefix`` (anchored):
    tokens and head dropped, SwiGLU ``w12``/``w3`` and DINOv2 chunked
    ``blocks.C.N`` renamed, ``pos_embed`` cut to its patch grid by
    ``slots``, the rest kept under the same name."""
    rules = tuple((f'{prefix}{tail}', None, why)
                  for tail, why in _DROP_TOKENS)
    block = prefix + r'blocks\.(?:\d+\.)?(\d+)\.'
    return rules + (
        (block + r'mlp\.w12\.', r'blocks.\1.mlp.fc1.',
         f'{what}: SwiGLU w12 (packed [gate; value]) = ViTDet mlp.fc1'),
        (block + r'mlp\.w3\.', r'blocks.\1.mlp.fc2.',
         f'{what}: SwiGLU w3 = ViTDet mlp.fc2'),
        (block, r'blocks.\1.',
         f'{what}: transformer block (DINOv2 blocks.C.N -> blocks.N)'),
        Rule(prefix + r'pos_embed$', 'pos_embed',
             f'{what}: patch embedding / position embedding / final norm',
             ops=(slots, )),
        (prefix + r'(patch_embed\.proj\.|norm\.)', r'\1',
         f'{what}: patch embedding / position embedding / final norm'),
    )


_MODULE = r'^(?:module\.)?'

# fmt: off
MAE_RULES: Tuple[Rule, ...] = (
    (r'^decoder_', None, 'MAE decoder (pixel reconstruction)'),
    (r'^mask_token$', None, 'MAE decoder mask token'),
) + _timm_body('^', 'MAE encoder')

#: timm-layout ViTs, also a file mmconv converted (the same names)
TIMM_RULES: Tuple[Rule, ...] = _timm_body('^', 'ViT', STRIP_PREFIX_SLOTS)

DINOV2_RULES: Tuple[Rule, ...] = (
    (r'^dino_head\.', None, 'DINOv2 DINO head (image-level prototypes)'),
    (r'^ibot_head\.', None, 'DINOv2 iBOT head (patch-level prototypes)'),
) + _timm_body(r'^(?:backbone\.)?', 'DINOv2 backbone')

DINO_VIT_RULES: Tuple[Rule, ...] = (
    (_MODULE + r'head\.', None, 'DINO projection head (MLP + weight-normalised prototypes)'),
) + _timm_body(_MODULE + r'backbone\.', 'DINO backbone')

IBOT_RULES: Tuple[Rule, ...] = (
    (_MODULE + r'head\.', None, 'iBOT head (class and patch projection heads, last_layer/last_layer2)'),
) + _timm_body(_MODULE + r'backbone\.', 'iBOT backbone')

MOCOV3_VIT_RULES: Tuple[Rule, ...] = (
    (_MODULE + r'base_encoder\.head\.', None, 'MoCo v3 projection MLP (replaces the ViT head)'),
    (_MODULE + r'momentum_encoder\.',   None, 'momentum encoder'),
    (_MODULE + r'predictor\.',          None, 'MoCo v3 prediction MLP'),
) + _timm_body(_MODULE + r'base_encoder\.', 'MoCo v3 base encoder')

_MMP = r'^backbone\.layers\.(\d+)\.'
MMPRETRAIN_VIT_RULES: Tuple[Rule, ...] = (
    (r'^backbone\.(?:cls_token|mask_token)$', None, 'class / mask token (the detector feeds patch tokens only)'),
    Rule(r'^backbone\.pos_embed$',           'pos_embed',         'position embedding', ops=(STRIP_PREFIX_SLOTS, )),
    (r'^backbone\.patch_embed\.projection\.', 'patch_embed.proj.', 'patch embedding'),
    (_MMP + r'ln1\.',                r'blocks.\1.norm1.',    'block norm before attention (ln1)'),
    (_MMP + r'attn\.gamma1\.weight$', r'blocks.\1.ls1.gamma', 'attention LayerScale (gamma1)'),
    (_MMP + r'attn\.(qkv|proj)\.',   r'blocks.\1.attn.\2.',  'attention'),
    (_MMP + r'ln2\.',                r'blocks.\1.norm2.',    'block norm before the FFN (ln2)'),
    (_MMP + r'ffn\.layers\.0\.0\.',  r'blocks.\1.mlp.fc1.',  'FFN first linear'),
    (_MMP + r'ffn\.layers\.1\.',     r'blocks.\1.mlp.fc2.',  'FFN second linear'),
    (_MMP + r'ffn\.w12\.',           r'blocks.\1.mlp.fc1.',  'SwiGLU w12 (packed [gate; value])'),
    (_MMP + r'ffn\.w3\.',            r'blocks.\1.mlp.fc2.',  'SwiGLU w3'),
    (_MMP + r'ffn\.gamma2\.weight$', r'blocks.\1.ls2.gamma', 'FFN LayerScale (gamma2)'),
    (r'^backbone\.ln1\.',            'norm.',                'final norm (ln1)'),
    (r'^neck\.',                     None, 'self-supervised neck (MAE decoder / projector)'),
    (r'^head\.',                     None, 'self-supervised head (predictor / loss)'),
    (r'^(?:momentum_encoder|target_net|teacher|target_generator)\.', None, 'momentum / target network'),
    (r'^data_preprocessor\.',        None, 'data preprocessor buffers'),
)
# fmt: on


# --- checks ------------------------------------------------------------------
def _square(n: int) -> Optional[int]:
    """``g`` if ``n == g * g`` else None."""
    g = math.isqrt(n)
    return g if g * g == n else None


def require_pos_embed(conv: 'Conversion', request: 'Request') -> None:
    """Refuse a ViT without ``pos_embed`` (its class slot is removed by
    :data:`STRIP_CLASS_SLOT` on the rule that renames it)."""
    if 'pos_embed' not in conv.state_dict:
        raise ConversionError(
            f'no pos_embed in the {conv.format.title} checkpoint: not a '
            'ViT with absolute position embeddings')


def note_prefix_slots(conv: 'Conversion', request: 'Request') -> None:
    """timm / mmpretrain: refuse a ViT without ``pos_embed``; say so when
    :data:`STRIP_PREFIX_SLOTS` kept it whole (timm ``no_embed_class``: no
    slot for the class/register tokens)."""
    pos = conv.state_dict.get('pos_embed')
    if pos is None:
        raise ConversionError('no pos_embed in the checkpoint: not a ViT '
                              'with absolute position embeddings')
    prefix = _prefix_tokens(OpContext('pos_embed', source=conv.source))
    if prefix and not any(c.key == 'pos_embed' for c in conv.changed):
        conv.notes.append(
            f'pos_embed {list(pos.shape)} has no slot for the '
            f'{prefix} class/register token(s) (timm no_embed_class): '
            'kept as it is')


def check_block_chunks(conv: 'Conversion', request: 'Request') -> None:
    """DINOv2 ``BlockChunk``: every block in one chunk, chunks contiguous.

    ``blocks.C.N`` (``block_chunks > 0``, the training default of the large
    models) pads chunk ``C`` with ``nn.Identity`` up to its first block, so
    ``N`` already is the flat index; the rules renamed to ``blocks.N``.
    """
    chunk_of: Dict[int, int] = {}
    for key in conv.source:
        m = re.match(r'^(?:backbone\.)?blocks\.(\d+)\.(\d+)\.', key)
        if m:
            chunk, block = int(m.group(1)), int(m.group(2))
            if chunk_of.setdefault(block, chunk) != chunk:
                raise ConversionError(
                    f'DINOv2 block {block} appears in chunks '
                    f'{chunk_of[block]} and {chunk}: not a BlockChunk layout')
    if not chunk_of:
        return
    order = [chunk_of[b] for b in sorted(chunk_of)]
    if order != sorted(order):
        raise ConversionError('DINOv2 chunks do not hold contiguous blocks: '
                              f'{order}')
    chunks = len(set(order))
    conv.notes.append(
        f'DINOv2 BlockChunk layout: {len(chunk_of)} blocks in {chunks} '
        'chunks, blocks.C.N -> blocks.N (the chunk-local index is the flat '
        'index)')


# --- what the weights imply ------------------------------------------------
def _mlp_ratio(hidden: int, dim: int) -> float:
    """A ratio ``r`` with ``int(dim * r) == hidden`` (ViTDet's rule)."""
    ratio = hidden / dim
    if int(dim * ratio) != hidden:
        ratio = (hidden + 0.5) / dim
    return ratio


def _heads(conv: 'Conversion', dim: int) -> Tuple[int, str]:
    """Attention heads and where the number comes from."""
    heads = _config_heads(conv)  # transformers config.json, when given
    if heads:
        return heads, 'num_attention_heads of config.json'
    fmt = conv.format.name
    table = dict(NUM_HEADS)
    table.update(FORMAT_NUM_HEADS.get(fmt, {}))
    if fmt == 'mmpretrain_vit' and any(
            k.startswith('momentum_encoder.') for k in conv.source):
        table.update(FORMAT_NUM_HEADS['mocov3_vit'])  # mocov3-small arch
    if dim in table:
        return table[dim], 'official model definition'
    return max(1, dim // 64), 'ASSUMED head_dim 64'


def embedding_and_depth(state_dict: Dict[str, Any]
                        ) -> Tuple[int, int, int, int]:
    """``(embed_dim, in_channels, patch_size, depth)`` of ViTDet-named
    tensors: the patch projection's shape and the number of ``blocks.N``.

    Raises:
        ConversionError: The blocks are not numbered ``0..depth-1``.
    """
    proj = state_dict['patch_embed.proj.weight']
    blocks = sorted({int(m.group(1)) for m in (
        re.match(r'blocks\.(\d+)\.', k) for k in state_dict) if m})
    depth = len(blocks)
    if blocks != list(range(depth)):
        raise ConversionError(f'transformer blocks {blocks} are not '
                              f'numbered 0..{depth - 1}')
    return int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[2]), depth


def infer_vit(state_dict: Dict[str, Any]) -> Dict[str, Any]:
    """The ViTDet arguments a converted state dict implies, or raise.

    Args:
        state_dict (dict): ViTDet-named tensors.

    Returns:
        dict: ``embed_dim``, ``depth``, ``patch_size``, ``in_channels``,
        ``img_size``, ``mlp_ratio``, ``mlp``, ``qkv_bias``, ``layer_scale``
        (bool), ``final_norm`` (no ``num_heads``: not in the weights).

    Raises:
        ConversionError: The tensors the arguments are read from are
            missing or do not fit together (the rest is checked against
            ViTDet itself, :data:`VIT_MODULE`).
    """
    for key in ('patch_embed.proj.weight', 'pos_embed',
                'blocks.0.mlp.fc1.weight', 'blocks.0.mlp.fc2.weight'):
        if key not in state_dict:
            raise ConversionError(f'no {key} after conversion: not a ViT '
                                  f'backbone ({len(state_dict)} tensors)')
    proj = state_dict['patch_embed.proj.weight']
    if proj.dim() != 4 or proj.shape[2] != proj.shape[3]:
        raise ConversionError(f'patch_embed.proj.weight {list(proj.shape)} '
                              'is not a square patch projection')
    dim, in_channels, patch, depth = embedding_and_depth(state_dict)
    hidden = int(state_dict['blocks.0.mlp.fc1.weight'].shape[0])
    fc2_in = int(state_dict['blocks.0.mlp.fc2.weight'].shape[1])
    if fc2_in == hidden:
        mlp = 'mlp'
    elif 2 * fc2_in == hidden:
        mlp = 'swiglu'
    else:
        raise ConversionError(
            f'blocks.0.mlp: fc1 gives {hidden} channels, fc2 takes {fc2_in}: '
            'neither an MLP nor a packed SwiGLU')
    grid = _square(int(state_dict['pos_embed'].shape[1]))
    if grid is None:
        shape = list(state_dict['pos_embed'].shape)
        raise ConversionError(f'pos_embed {shape} is not a square patch '
                              'grid')
    args = dict(embed_dim=dim, depth=depth, patch_size=patch,
                in_channels=in_channels, img_size=grid * patch,
                mlp_ratio=_mlp_ratio(hidden, dim), mlp=mlp,
                qkv_bias='blocks.0.attn.qkv.bias' in state_dict,
                layer_scale='blocks.0.ls1.gamma' in state_dict,
                final_norm='norm.weight' in state_dict)
    return args


def _yes(flag: bool) -> str:
    return 'yes' if flag else 'no'


def vit_architecture(conv: 'Conversion', request: 'Request') -> None:
    """Family step: record the ViTDet arguments the result implies
    (``meta['vit']``, summary line, config hints); :data:`VIT_MODULE`
    checked it is one ViT."""
    args = infer_vit(conv.state_dict)
    heads, why = _heads(conv, args['embed_dim'])
    args['num_heads'] = heads
    conv.meta['vit'] = dict(args)
    ratio = round(args['mlp_ratio'], 6)
    conv.lines.append(
        f'vit:      embed_dim={args["embed_dim"]} depth={args["depth"]} '
        f'num_heads={heads} patch_size={args["patch_size"]} '
        f'img_size={args["img_size"]} mlp_ratio={ratio:g} '
        f'layer_scale={_yes(args["layer_scale"])} mlp={args["mlp"]} '
        f'qkv_bias={_yes(args["qkv_bias"])} '
        f'final_norm={_yes(args["final_norm"])}')
    conv.notes.append(
        f'num_heads={heads} is not recorded in the weights ({why}); set it '
        'in the config if your model differs')
    if args['layer_scale']:
        conv.notes.append(
            'LayerScale is carried (blocks.N.ls1.gamma / ls2.gamma): build '
            'ViTDet with layer_scale set (any value, e.g. 1e-5; the '
            'checkpoint replaces it) or these tensors do not load')
    if args['final_norm']:
        conv.notes.append(
            'the final norm is kept (norm.*): ViTDet uses it only with '
            'final_norm=True; the ViTDet recipe (final_norm=False) leaves it '
            'unused')
    if args['patch_size'] != 16:
        conv.notes.append(
            f'patch size {args["patch_size"]}: SimpleFPN strides are '
            f'simple_fpn_strides({args["patch_size"]}) (anchor generator '
            'and RoI extractors must use them)')
    conv.hints = lambda dst: _hints(args, dst)


def _hints(args: Dict[str, Any], dst: str) -> str:
    """The config lines that use the converted file."""
    from_vit = (
        f"type='ViTDet', img_size={args['img_size']}, "
        f"patch_size={args['patch_size']}, embed_dim={args['embed_dim']}, "
        f"depth={args['depth']}, num_heads={args['num_heads']}, "
        f"mlp_ratio={args['mlp_ratio']!r}, qkv_bias={args['qkv_bias']}, "
        f"layer_scale={1e-5 if args['layer_scale'] else None}, "
        f"mlp='{args['mlp']}'")
    lines = [
        "custom_imports = dict(imports=['mmconv'], "
        'allow_failed_imports=False)',
        f'model = dict(backbone=dict({from_vit},',
        "    init_cfg=dict(type='Pretrained', "
        f"checkpoint='{dst}')),",
        f"    neck=dict(type='SimpleFPN', "
        f"backbone_channel={args['embed_dim']}))",
    ]
    if args['patch_size'] != 16:
        lines.append(f'# strides: mmconv.models.simple_fpn_strides('
                     f'{args["patch_size"]}) for the anchor generator and '
                     'the RoI extractors')
    return '\n'.join(lines)


def _vitdet_kwargs(state_dict: Dict[str, Any]) -> Dict[str, Any]:
    """The ViTDet arguments that give the result's tensors (the number of
    heads shapes none: 1; every block global)."""
    args = infer_vit(state_dict)
    return dict(img_size=args['img_size'], patch_size=args['patch_size'],
                in_channels=args['in_channels'], embed_dim=args['embed_dim'],
                depth=args['depth'], num_heads=1,
                mlp_ratio=args['mlp_ratio'], qkv_bias=args['qkv_bias'],
                layer_scale=1e-5 if args['layer_scale'] else None,
                mlp=args['mlp'], final_norm=args['final_norm'],
                window_size=0, global_attn_indexes=())


#: The module a ViT result is loaded into and checked against
#: (:mod:`mmconv.verify`): mmconv's ViTDet (:class:`mmconv.models.ViTDet`)
#: with the arguments the weights imply.
VIT_MODULE = TargetModule(
    'mmconv.models.vit:ViTDet', _vitdet_kwargs,
    lambda a: f'ViT (embed_dim={a["embed_dim"]}, depth={a["depth"]}, '
    f'patch_size={a["patch_size"]})')

#: ``Family.fit``: the patch position embedding resampled (bicubic) to the
#: grid of the module it is loaded into (``SelfSupPretrained``), as timm's
#: ``resample_abs_pos_embed`` and mmpretrain's ``resize_pos_embed`` do at
#: load time: a 224-px DINOv2 run (16x16) into the 518-px config (37x37).
#: Other channels or a non-square grid are left for the shape check.
FIT_RULES: Tuple[Rule, ...] = (
    Rule(r'^pos_embed$', r'\g<0>', 'patch position embedding',
         ops=(ResampleGrid(), )), )

# --- declarations ----------------------------------------------------------
VIT_FAMILY = Family('vit', 'Vision Transformer backbone',
                    options=('select', 'prefix'),
                    finish=(vit_architecture, ), targets=('mmdet', ),
                    never_pretrained=(r'(?:^|\.)attn\.rel_pos_[hw]$', ),
                    module=VIT_MODULE, fit=FIT_RULES)

_QKV0 = r'blocks\.0\.attn\.qkv\.weight$'

# fmt: off
VIT_FORMATS: Tuple[SourceFormat, ...] = (
    SourceFormat(
        'mae', 'vit', 'MAE (encoder + decoder training checkpoint)',
        rules=MAE_RULES,
        sentinels=(r'^decoder_embed\.weight$', '^' + _QKV0,
                   r'^patch_embed\.proj\.weight$', r'^pos_embed$'),
        containers=('model', ), surgery=(require_pos_embed, ),
        released=('checkpoint-799.pth', ),
        source='facebookresearch/mae: main_pretrain.py (util/misc.save_model) saves {model, optimizer, epoch, scaler, args}; models_mae.MaskedAutoencoderViT'),
    SourceFormat(
        'dinov2', 'vit', 'DINOv2 (hub backbone or training teacher)',
        rules=DINOV2_RULES,
        sentinels=(r'^(?:backbone\.)?mask_token$',
                   r'^(?:backbone\.)?blocks\.0\.(?:0\.)?ls1\.gamma$',
                   r'^(?:backbone\.)?patch_embed\.proj\.weight$',
                   r'^(?:backbone\.)?pos_embed$'),
        containers=('teacher', ), surgery=(check_block_chunks, require_pos_embed),
        released=('dinov2_vits14_pretrain.pth', 'dinov2_vitb14_pretrain.pth',
                  'dinov2_vitl14_pretrain.pth', 'dinov2_vitg14_pretrain.pth',
                  'dinov2_vits14_reg4_pretrain.pth', 'dinov2_vitb14_reg4_pretrain.pth',
                  'teacher_checkpoint.pth'),
        source='facebookresearch/dinov2: hub/backbones.py releases the bare DinoVisionTransformer state dict; train/train.py do_test saves {teacher: {backbone, dino_head, ibot_head}}'),
    SourceFormat(
        'ibot', 'vit', 'iBOT (ViT, teacher/student checkpoint)',
        rules=IBOT_RULES,
        sentinels=(_MODULE + r'head\.last_layer2\.weight_[gv]$',
                   _MODULE + r'head\.last_layer\.weight_[gv]$',
                   _MODULE + r'backbone\.' + _QKV0),
        containers=('teacher', 'student'), surgery=(require_pos_embed, ),
        released=('checkpoint.pth', ),
        source='bytedance/ibot: main_ibot.py saves {student, teacher, optimizer, epoch, args, ibot_loss[, fp16_scaler]}; the teacher head shares last_layer as last_layer2'),
    SourceFormat(
        'dino_vit', 'vit', 'DINO (ViT, teacher/student checkpoint)',
        rules=DINO_VIT_RULES,
        sentinels=(_MODULE + r'head\.last_layer\.weight_[gv]$',
                   _MODULE + r'backbone\.' + _QKV0),
        containers=('teacher', 'student'), surgery=(require_pos_embed, ),
        released=('dino_deitsmall16_pretrain_full_checkpoint.pth',
                  'dino_vitbase16_pretrain_full_checkpoint.pth',
                  'dino_deitsmall8_pretrain_full_checkpoint.pth'),
        source='facebookresearch/dino: main_dino.py saves {student, teacher, optimizer, epoch, args, dino_loss}'),
    SourceFormat(
        'mocov3_vit', 'vit', 'MoCo v3 (ViT)',
        rules=MOCOV3_VIT_RULES,
        sentinels=(_MODULE + r'base_encoder\.' + _QKV0,
                   _MODULE + r'base_encoder\.pos_embed$'),
        surgery=(require_pos_embed, ),
        released=('vit-s-300ep.pth.tar', 'vit-b-300ep.pth.tar'),
        source='facebookresearch/moco-v3: main_moco.py saves {epoch, arch, state_dict, optimizer, scaler} of the DDP model'),
    SourceFormat(
        'mmpretrain_vit', 'vit', 'mmpretrain self-supervised ViT (MAE, MoCoV3, ...)',
        rules=MMPRETRAIN_VIT_RULES,
        sentinels=(r'^backbone\.layers\.0\.attn\.qkv\.weight$',
                   r'^backbone\.patch_embed\.projection\.weight$'),
        surgery=(note_prefix_slots, ),
        source='open-mmlab/mmpretrain 1.x: MMEngine checkpoint {meta, state_dict, message_hub, optimizer, ...}; VisionTransformer / MAEViT / MoCoV3ViT'),
    SourceFormat(
        'timm_vit', 'vit', 'timm-layout ViT (timm, MAE/DINO/iBOT released backbones)',
        rules=TIMM_RULES,
        sentinels=('^' + _QKV0, r'^patch_embed\.proj\.weight$', r'^pos_embed$'),
        containers=('model', 'state_dict'), surgery=(note_prefix_slots, ),
        released=('mae_pretrain_vit_base.pth', 'mae_pretrain_vit_large.pth',
                  'mae_pretrain_vit_huge.pth', 'dino_deitsmall16_pretrain.pth',
                  'dino_vitbase16_pretrain.pth', 'dino_deitsmall8_pretrain.pth',
                  'checkpoint_teacher.pth'),
        source='timm VisionTransformer state dicts; MAE releases {model: encoder}; DINO releases the bare backbone; iBOT checkpoint_teacher.pth'),
)
# fmt: on

register(VIT_FAMILY, *VIT_FORMATS)


# --- Hugging Face transformers -------------------------------------------
# ViTModel / ViTForImageClassification / ViTMAEModel (``hf_vit``),
# ViTMAEForPreTraining (``hf_vit_mae``), Dinov2Model / Dinov2WithRegisters-
# Model / their *ForImageClassification (``hf_dinov2``), as
# ``save_pretrained`` writes them (transformers 4.x and 5.x write the same
# names; 5.x's own modules have others, which ``torch.save(model.
# state_dict())`` writes: ``layers.N.attention.{q,k,v,o}_proj``, DINOv2
# ``mlp.{gate,up,down}_proj``; both are read). Recorded layouts:
# tests/fixtures/hf_vit_layouts.py. transformers' convert_vit_timm_to_
# pytorch.py, convert_vit_mae_to_pytorch.py and convert_dinov2_to_hf.py
# split timm's ``qkv`` rows into query [0, C), key [C, 2C), value [2C, 3C):
# the rules concatenate them back in that order; DINOv2's ``w12`` / ``w3``
# become ``weights_in`` / ``weights_out`` unchanged (same packing as
# ViTDet's SwiGLU ``fc1`` / ``fc2``), and 5.x's ``gate_proj`` / ``up_proj``
# are ``weights_in`` chunked in two (``conversion_mapping``), concatenated
# back here.
_HF_VIT = r'^(?:vit\.)?'
_HF_DINOV2 = r'^(?:dinov2\.|dinov2_with_registers\.)?'
#: a transformer layer: ``encoder.layer.N.`` (the files), ``layers.N.``
#: (transformers 5 ViT modules)
_HF_LAYER = r'(?:encoder\.layer|layers)\.(\d+)\.'
_QKV_WHY = ('attention {0}, {1}, {2} projections fused into qkv '
            '(cat([q, k, v], 0), the rows transformers split them from)')


def _hf_qkv(prefix: str) -> Tuple[Rule, ...]:
    """The separate q, k, v linears of a transformers ViT layer -> ViTDet
    ``attn.qkv`` (files: ``attention.attention.{query,key,value}``;
    transformers 5 modules: ``attention.{q,k,v}_proj``)."""
    out = []
    for tail, parts in (
            (r'attention\.attention\.(?P<part>query|key|value)',
             ('query', 'key', 'value')),
            (r'attention\.(?P<part>q_proj|k_proj|v_proj)',
             ('q_proj', 'k_proj', 'v_proj'))):
        out.append(Rule(prefix + _HF_LAYER + tail + r'\.(weight|bias)$',
                        r'blocks.\1.attn.qkv.\3', _QKV_WHY.format(*parts),
                        ops=(Concatenate(0), ), parts=parts))
    return tuple(out)


def _hf_embeddings(prefix: str, what: str) -> Tuple[Rule, ...]:
    """Embeddings, final norm and heads of a transformers ViT model."""
    return (
        (prefix + r'embeddings\.cls_token$', None,
         'class token (the detector feeds patch tokens only)'),
        (prefix + r'embeddings\.register_tokens$', None,
         'register tokens (Dinov2WithRegisters; not used by the detector)'),
        (prefix + r'embeddings\.mask_token$', None,
         'mask token (masked-image-modelling input)'),
        Rule(prefix + r'embeddings\.position_embeddings$', 'pos_embed',
             f'{what}: position embedding (position_embeddings)',
             ops=(STRIP_CLASS_SLOT, )),
        (prefix + r'embeddings\.patch_embeddings\.projection\.',
         'patch_embed.proj.', f'{what}: patch embedding (projection)'),
        (prefix + r'layernorm\.', 'norm.', f'{what}: final norm (layernorm)'),
        (prefix + r'pooler\.', None,
         'pooler (dense + tanh on the class token; not used by the '
         'detector)'),
        (r'^classifier\.', None, 'image classification head (classifier)'),
    )


_VL = _HF_VIT + _HF_LAYER
_DL = _HF_DINOV2 + _HF_LAYER

# fmt: off
HF_VIT_RULES: Tuple[Rule, ...] = _hf_embeddings(_HF_VIT, 'ViT') + _hf_qkv(_HF_VIT) + (
    (_VL + r'attention\.(?:output\.dense|o_proj)\.', r'blocks.\1.attn.proj.',  'attention output projection (attention.output.dense)'),
    (_VL + r'layernorm_before\.',                    r'blocks.\1.norm1.',      'block norm before attention (layernorm_before)'),
    (_VL + r'layernorm_after\.',                     r'blocks.\1.norm2.',      'block norm before the MLP (layernorm_after)'),
    (_VL + r'(?:intermediate\.dense|mlp\.fc1)\.',    r'blocks.\1.mlp.fc1.',    'MLP first linear (intermediate.dense)'),
    (_VL + r'(?:output\.dense|mlp\.fc2)\.',          r'blocks.\1.mlp.fc2.',    'MLP second linear (output.dense)'),
)

HF_VIT_MAE_RULES: Tuple[Rule, ...] = (
    (r'^decoder\.mask_token$', None, 'MAE decoder mask token (masked-image-modelling input)'),
    (r'^decoder\.',            None, 'MAE decoder (pixel reconstruction: decoder_embed, decoder layers, decoder_pos_embed, decoder_norm, decoder_pred)'),
) + HF_VIT_RULES

HF_DINOV2_RULES: Tuple[Rule, ...] = _hf_embeddings(_HF_DINOV2, 'DINOv2') + _hf_qkv(_HF_DINOV2) + (
    (_DL + r'attention\.(?:output\.dense|o_proj)\.', r'blocks.\1.attn.proj.', 'attention output projection (attention.output.dense)'),
    (_DL + r'(norm[12])\.',                          r'blocks.\1.\2.',        'block norm'),
    (_DL + r'layer_scale1\.lambda1$',                r'blocks.\1.ls1.gamma',  'attention LayerScale (layer_scale1.lambda1)'),
    (_DL + r'layer_scale2\.lambda1$',                r'blocks.\1.ls2.gamma',  'MLP LayerScale (layer_scale2.lambda1)'),
    (_DL + r'mlp\.(fc[12])\.',                       r'blocks.\1.mlp.\2.',    'MLP'),
    (_DL + r'mlp\.weights_in\.',                     r'blocks.\1.mlp.fc1.',   'SwiGLU weights_in (packed [gate; value], DINOv2 w12) = ViTDet mlp.fc1'),
    (_DL + r'mlp\.weights_out\.',                    r'blocks.\1.mlp.fc2.',   'SwiGLU weights_out (DINOv2 w3) = ViTDet mlp.fc2'),
    Rule(_DL + r'mlp\.(?P<part>gate_proj|up_proj)\.(weight|bias)$', r'blocks.\1.mlp.fc1.\3',
         'SwiGLU gate_proj, up_proj fused into ViTDet mlp.fc1 (cat([gate, up], 0) = weights_in)',
         ops=(Concatenate(0), ), parts=('gate_proj', 'up_proj')),
    (_DL + r'mlp\.down_proj\.',                      r'blocks.\1.mlp.fc2.',   'SwiGLU down_proj (weights_out) = ViTDet mlp.fc2'),
)
# fmt: on


def _hf_config(conv: 'Conversion') -> Optional[Dict[str, Any]]:
    """The transformers ``config.json`` that came with the weights (a
    ``save_pretrained`` folder or ``hf://``), for the ``hf_*`` formats."""
    if not conv.format.facts.get('transformers'):
        return None
    config = (conv.entries or {}).get('config')
    return config if isinstance(config, dict) else None


def _int(value: Any) -> Optional[int]:
    """``value`` if it is an int (not a bool), else None."""
    return value if isinstance(value, int) and \
        not isinstance(value, bool) else None


def _config_heads(conv: 'Conversion') -> Optional[int]:
    """``num_attention_heads`` of the transformers ``config.json``."""
    config = _hf_config(conv)
    return _int(config.get('num_attention_heads')) if config else None


def check_hf_config(conv: 'Conversion', request: 'Request') -> None:
    """transformers formats: a ``config.json`` that came with the weights
    must describe them (it supplies only what the weights cannot say: the
    number of heads); notes what ViTDet does differently (LayerNorm eps,
    activation)."""
    config = _hf_config(conv)
    if config is None:
        return
    sd, src = conv.state_dict, conv.source
    said: Dict[str, Any] = {}
    proj = sd.get('patch_embed.proj.weight')
    if proj is not None and proj.dim() == 4:
        said.update(hidden_size=int(proj.shape[0]),
                    num_channels=int(proj.shape[1]),
                    patch_size=int(proj.shape[2]))
        pos = sd.get('pos_embed')
        grid = _square(int(pos.shape[1])) if pos is not None and \
            pos.dim() == 3 else None
        if grid:
            said['image_size'] = grid * int(proj.shape[2])
    said['num_hidden_layers'] = len({
        m.group(1) for m in (re.match(r'blocks\.(\d+)\.', k) for k in sd)
        if m})
    said['qkv_bias'] = 'blocks.0.attn.qkv.bias' in sd
    fc1, fc2 = sd.get('blocks.0.mlp.fc1.weight'), sd.get(
        'blocks.0.mlp.fc2.weight')
    if fc1 is not None and fc2 is not None:
        said['use_swiglu_ffn'] = int(fc1.shape[0]) == 2 * int(fc2.shape[1])
    registers = next((v for k, v in src.items()
                      if k.endswith('embeddings.register_tokens')), None)
    if registers is not None and registers.dim() == 3:
        said['num_register_tokens'] = int(registers.shape[1])
    wrong = []
    for key, value in said.items():
        given = config.get(key)
        if isinstance(value, bool):
            same = not isinstance(given, bool) or given == value
        else:  # an int; a list image_size [h, w] is not checked
            same = _int(given) is None or given == value
        if not same:
            wrong.append(f'{key}={given!r} (the weights: {value!r})')
    heads = _int(config.get('num_attention_heads'))
    dim = said.get('hidden_size')
    if heads is not None and dim and (heads < 1 or dim % heads):
        wrong.append(f'num_attention_heads={heads} (does not divide the '
                     f'width {dim})')
    if wrong:
        raise ConversionError(
            f'config.json does not describe these {conv.format.title} '
            f'weights: {"; ".join(wrong)}: use the config.json saved with '
            'them (or none)')
    arch = config.get('architectures') or [config.get('model_type')]
    conv.notes.append(f'config.json: {", ".join(map(str, arch))} '
                      f'(model_type {config.get("model_type")!r}) confirms '
                      'the weights')
    eps = config.get('layer_norm_eps')
    if isinstance(eps, float) and eps != 1e-6:
        conv.notes.append(
            f'layer_norm_eps={eps:g} in config.json; ViTDet norms use '
            "eps=1e-6 (norm_cfg=dict(type='LN', eps=1e-6)): set "
            f"norm_cfg=dict(type='LN', eps={eps:g}) to match exactly")
    act = config.get('hidden_act')
    if act not in (None, 'gelu'):
        conv.notes.append(f'hidden_act={act!r} in config.json; ViTDet uses '
                          "act_cfg=dict(type='GELU') (exact GELU)")


_HF_SOURCE = ('huggingface/transformers: PreTrainedModel.save_pretrained '
              '(config.json + model.safetensors, 4.x and 5.x alike); '
              'models/{vit,vit_mae,dinov2,dinov2_with_registers}/'
              'modeling_*.py; convert_vit_timm_to_pytorch.py, '
              'convert_vit_mae_to_pytorch.py, convert_dinov2_to_hf.py')
_HF_FILES = ('model.safetensors', 'pytorch_model.bin')
_TRANSFORMERS = {'transformers': True}


def _hf_sentinels(prefix: str, layer_key: str) -> Tuple[str, ...]:
    """Patch embedding, position embedding and a key of layer 0."""
    return (prefix + r'embeddings\.patch_embeddings\.projection\.weight$',
            prefix + r'embeddings\.position_embeddings$',
            prefix + layer_key)


_HF_VIT_SENTINELS = _hf_sentinels(
    _HF_VIT, r'(?:encoder\.layer|layers)\.0\.layernorm_before\.weight$')


# fmt: off
HF_VIT_FORMATS: Tuple[SourceFormat, ...] = (
    SourceFormat(
        'hf_vit', 'vit', 'transformers ViT (ViTModel, ViTForImageClassification, ViTMAEModel)',
        rules=HF_VIT_RULES,
        sentinels=_HF_VIT_SENTINELS,
        surgery=(check_hf_config, require_pos_embed),
        released=_HF_FILES, source=_HF_SOURCE, facts=_TRANSFORMERS),
    SourceFormat(
        'hf_vit_mae', 'vit', 'transformers ViTMAEForPreTraining (encoder + decoder)',
        rules=HF_VIT_MAE_RULES,
        sentinels=_HF_VIT_SENTINELS + (r'^decoder\.decoder_embed\.weight$', ),
        surgery=(check_hf_config, require_pos_embed),
        released=_HF_FILES, source=_HF_SOURCE, facts=_TRANSFORMERS),
    SourceFormat(
        'hf_dinov2', 'vit', 'transformers DINOv2 (Dinov2Model, Dinov2WithRegistersModel, *ForImageClassification)',
        rules=HF_DINOV2_RULES,
        sentinels=_hf_sentinels(_HF_DINOV2, r'encoder\.layer\.0\.layer_scale1\.lambda1$'),
        surgery=(check_hf_config, require_pos_embed),
        released=_HF_FILES, source=_HF_SOURCE, facts=_TRANSFORMERS),
)
# fmt: on

register(*HF_VIT_FORMATS)
__all__ += ['HF_VIT_FORMATS', 'check_hf_config', 'FIT_RULES']
