# Copyright (c) mmconv contributors. All rights reserved.
"""Swin Transformer v1 / V2 (official, SimMIM, timm, transformers, converted)
-> MMDetection's ``SwinTransformer`` and mmpretrain's ``SwinTransformerV2``.

Two families, because the targets differ: ``swin`` (:data:`SWIN_FAMILY`,
:data:`SWIN_MODULE`) and ``swinv2`` (:data:`SWINV2_FAMILY`,
:data:`SWINV2_MODULE`); the targets' names are the canonical ones. Rules:
``*_RULES`` (:data:`SWIN_FORMATS`, :data:`HF_SWIN_FORMATS`); window fitting:
:data:`FIT_RULES`, :data:`WINDOW_RULES`. Users: README, "Swin v1 / V2".
"""
import math
import re
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from ..errors import ConversionError, UsageError
from ..ops import Concatenate, Regroup, ResizeTable
from ..spec import (Conversion, Family, OptionFit, Request, Rule,
                    SourceFormat, TargetModule, check_config, register)

if TYPE_CHECKING:  # pragma: no cover
    import torch


__all__ = [
    'SWIN_FAMILY', 'SWINV2_FAMILY', 'SWIN_FORMATS', 'PATCH_MERGING',
    'FIT_RULES', 'WINDOW_RULES', 'window_shapes', 'window_option',
    'swin_architecture', 'infer_swin'
]

# --- rule groups -----------------------------------------------------------
# Canonical names: the targets' (:data:`SWIN_MODULE`, :data:`SWINV2_MODULE`).
# The official / timm ``attn.*`` keep their names under ``attn.w_msa.``
# (V2 also ``logit_scale``, ``q_bias``, ``v_bias``, ``cpb_mlp.0/2``).
_L = r'layers\.(\d+)\.blocks\.(\d+)\.'
_S = r'stages.\1.blocks.\2.'
_INDEX_WHY = ('relative_position_index buffer (the target rebuilds it from '
              'its window size)')
_MASK_WHY = ('attn_mask buffer of shifted windows (the target rebuilds it '
             'for each input size)')
_COORDS_WHY = ('relative_coords_table buffer (mmpretrain rebuilds it from '
               'window_size and pretrained_window_sizes)')


def _blocks(prefix: str, what: str) -> Tuple[Rule, ...]:
    """Transformer-block rules shared by every layout under ``prefix``."""
    p = prefix + _L
    return (
        (p + r'attn\.relative_position_index$', None, _INDEX_WHY),
        (p + r'attn\.relative_coords_table$', None, _COORDS_WHY),
        (p + r'attn_mask$', None, _MASK_WHY),
        (p + r'attn\.', _S + 'attn.w_msa.', f'{what}: window attention'),
        (p + r'mlp\.fc1\.', _S + 'ffn.layers.0.0.', f'{what}: MLP fc1'),
        (p + r'mlp\.fc2\.', _S + 'ffn.layers.1.', f'{what}: MLP fc2'),
        (p + r'(norm[12])\.', _S + r'\3.', f'{what}: block norms'),
    )


def _stem(prefix: str, what: str) -> Tuple[Rule, ...]:
    """Patch embedding, position embedding, final norm and head."""
    return (
        (prefix + r'patch_embed\.proj\.', 'patch_embed.projection.',
         f'{what}: patch embedding'),
        (prefix + r'patch_embed\.norm\.', 'patch_embed.norm.',
         f'{what}: patch embedding norm'),
        (prefix + r'absolute_pos_embed$', 'absolute_pos_embed',
         f'{what}: absolute position embedding (ape=True)'),
        (prefix + r'norm\.', 'norm3.',
         f'{what}: final norm = output norm of the last stage (norm3 of the '
         'pyramid, out_indices (0, 1, 2, 3))'),
        (prefix + r'head\.', None, 'ImageNet classifier'),
    )


#: ``reorder_patch_merging``: the input columns of a 2x2 patch merging's
#: ``reduction.weight`` ``(2C, 4C)``, official / timm ``[x0, x1, x2, x3]``
#: blocks of ``C`` channels (the top-left, bottom-left, top-right,
#: bottom-right neighbours) -> the ``nn.Unfold`` order (channel-major,
#: kernel positions row-major) of MMDetection's / mmpretrain's
#: ``PatchMerging`` (output channel ``c * 4 + k`` is channel ``c`` of block
#: ``[0, 2, 1, 3][k]``: MMDetection's ``correct_unfold_reduction_order``).
PATCH_MERGING = Regroup(
    (0, 2, 1, 3), dim=1, ndim=2,
    what='reorder_patch_merging: input columns [x0,x1,x2,x3] blocks -> '
    'nn.Unfold order (MMDetection swin_converter)',
    mismatch='{key} has shape {shape}: not a 2x2 patch merging (out, 4C) '
    'weight')
#: The same order for the ``4C`` channels of a v1 ``downsample.norm``
#: (before the reduction; ``correct_unfold_norm_order``).
PATCH_MERGING_NORM = Regroup(
    (0, 2, 1, 3),
    what='reorder_patch_merging: 4C channels -> nn.Unfold order',
    mismatch='{key} has shape {shape}: not the 4C channels of a 2x2 patch '
    'merging norm')


def _downsample(prefix: str, first: int, shift: int, what: str,
                v2: bool) -> Tuple[Rule, ...]:
    """``layers.N.downsample`` (``N`` from ``first``, three of them) ->
    ``stages.{N + shift}.downsample``: the official code merges patches at
    the end of stages 0-2, timm at the start of stages 1-3; MMDetection at
    the end (as the official code), mmpretrain's V2 at the start (as timm).
    Swin has four stages. The merged channels are reordered
    (:data:`PATCH_MERGING`); V2's norm (``2C``, after the reduction) is
    not."""
    rules: List[Rule] = []
    for n in range(first, first + 3):
        src = prefix + rf'layers\.{n}\.downsample\.'
        dst = f'stages.{n + shift}.downsample.'
        why = f'{what}: patch merging of layers.{n} (stage {n + shift})'
        rules.append(Rule(src + r'reduction\.weight$',
                          dst + 'reduction.weight', why,
                          ops=(PATCH_MERGING, )))
        if not v2:
            rules.append(Rule(src + r'norm\.', dst + 'norm.', why,
                              ops=(PATCH_MERGING_NORM, )))
        rules.append(Rule(src + r'(reduction|norm)\.', dst + r'\1.', why))
    return tuple(rules)


def _swin_rules(prefix: str, what: str, first: int, shift: int,
                v2: bool) -> Tuple[Rule, ...]:
    return _blocks(prefix, what) + \
        _downsample(prefix, first, shift, what, v2) + _stem(prefix, what)


_SIMMIM_HEAD: Tuple[Rule, ...] = (
    (r'^encoder\.mask_token$', None,
     'SimMIM mask token (masked-image-modelling input)'),
    (r'^decoder\.', None, 'SimMIM decoder (1x1 conv + pixel shuffle)'),
)

# (first layers.N with a downsample, stage shift to the target)
SWIN_RULES = _swin_rules('^', 'Swin', 0, 0, False)
SWINV2_RULES = _swin_rules('^', 'Swin V2', 0, 1, True)
SIMMIM_RULES = _SIMMIM_HEAD + _swin_rules(r'^encoder\.', 'SimMIM encoder',
                                          0, 0, False)
SIMMIM_SWINV2_RULES = _SIMMIM_HEAD + _swin_rules(
    r'^encoder\.', 'SimMIM Swin V2 encoder', 0, 1, True)
# timm saves no buffer (nothing for the buffer rules to drop)
TIMM_SWIN_RULES = _swin_rules('^', 'timm Swin', 1, -1, False)
TIMM_SWINV2_RULES = _swin_rules('^', 'timm Swin V2', 1, 0, True)


def _target_layout(what: str) -> Tuple[Rule, ...]:
    """A state dict already in the target's names (optionally under
    ``backbone.``): rebuilt buffers and other modules dropped."""
    b = r'^(?:backbone\.)?'
    return (
        (b + r'(.*\.)?relative_position_index$', None, _INDEX_WHY),
        (b + r'(.*\.)?relative_coords_table$', None, _COORDS_WHY),
        (b + r'(.*\.)?attn_mask$', None, _MASK_WHY),
        (b + r'norm\.', 'norm3.',
         "final norm left as norm.* by MMDetection's swin_converter (its "
         'SwinTransformer ignores it) = output norm of the last stage'),
        (b + r'((?:patch_embed|stages|norm\d)\.|absolute_pos_embed$)',
         r'\1', f'{what}: already in its names'),
        (r'^(?:neck|rpn_head|roi_head|bbox_head|mask_head|head|'
         r'data_preprocessor)\.', None, f'not the backbone ({what} file '
         'of a whole model)'),
    )


MMDET_SWIN_RULES = _target_layout('MMDetection SwinTransformer')
MMPRETRAIN_SWINV2_RULES = _target_layout('mmpretrain SwinTransformerV2')


# --- window fitting ----------------------------------------------------------
_TABLE = 'relative_position_bias_table'
_TABLE_KEY = r'relative_position_bias_table$'
_TABLE_WHY = 'relative position bias table of a v1 window attention'

#: ``Family.fit``: v1 bias tables resized to the window of the module being
#: initialised (``SelfSupPretrained``, target shapes of the module; a table
#: of other heads is left for the module's shape check to report).
FIT_RULES: Tuple[Rule, ...] = (
    Rule(_TABLE_KEY, r'\g<0>', _TABLE_WHY, ops=(
        ResizeTable(what='window {src} -> {dst} of the model'), )), )
#: ``--window-size N``: every v1 bias table resized to window ``N``.
WINDOW_RULES: Tuple[Rule, ...] = (
    Rule(_TABLE_KEY, r'\g<0>', _TABLE_WHY, ops=(
        ResizeTable(what='window {src} -> {dst} (--window-size)'), )), )


def _window_of(rows: int) -> Optional[int]:
    """``W`` with ``(2W - 1) ** 2 == rows``, or None."""
    side = math.isqrt(rows)
    return (side + 1) // 2 if side * side == rows and side % 2 else None


def window_shapes(state_dict: Dict[str, 'torch.Tensor'],
                  window: int) -> Dict[str, Tuple[int, ...]]:
    """``--window-size N``: the shape ``((2N - 1)^2, heads)`` of every v1
    bias table at the window ``N`` of the detector (``window_size`` of the
    config); none for Swin V2.

    Raises:
        UsageError: ``N`` < 1.
    """
    if window < 1:
        raise UsageError(f'--window-size {window}: must be a positive int')
    return {k: ((2 * window - 1)**2, int(v.shape[1]))
            for k, v in state_dict.items()
            if k.endswith(_TABLE) and v.dim() == 2}


def window_option(conv: 'Conversion', request: 'Request') -> None:
    """Family step: the notes of ``--window-size N`` (the tables were
    resized by :data:`WINDOW_RULES` before the family's steps)."""
    window = request.window_size
    if window is None:
        return
    if not any(k.endswith(_TABLE) for k in conv.state_dict):
        # Swin V2: continuous position bias, nothing to resize
        conv.notes.append(
            f'--window-size {window}: Swin V2 has no bias table to resize; '
            'set window_size and pretrained_window_sizes in the config')
        return
    resized = [c for c in conv.changed if c.key.endswith(_TABLE)]
    if resized:
        src = _window_of(resized[0].before[0])
        conv.notes.append(
            f'{len(resized)} relative position bias tables resized by '
            'bicubic interpolation, as MMDetection '
            f'SwinTransformer.init_weights does (window {src} -> {window} '
            '(--window-size))')


# --- what the weights imply --------------------------------------------------
def _numbers(pattern: str, keys: List[str]) -> List[int]:
    found = {int(m.group(1)) for m in map(re.compile(pattern).match, keys)
             if m}
    return sorted(found)


def infer_swin(state_dict: Dict[str, 'torch.Tensor'], v2: bool
               ) -> Dict[str, Any]:
    """The backbone arguments a converted state dict implies, or raise.

    Args:
        state_dict (dict): Canonical (target-named) tensors.
        v2 (bool): Swin V2 (mmpretrain names, downsample at stage start).

    Returns:
        dict: ``embed_dims``, ``depths``, ``num_heads``, ``patch_size``,
        ``window_size`` (None when the weights do not record it: V2),
        ``mlp_ratio``, ``qkv_bias`` (v1), ``in_channels``.

    Raises:
        ConversionError: The tensors the arguments are read from are
            missing (the rest is checked against the target module itself,
            :data:`SWIN_MODULE` / :data:`SWINV2_MODULE`).
    """
    keys = list(state_dict)
    proj = state_dict.get('patch_embed.projection.weight')
    if proj is None or proj.dim() != 4:
        raise ConversionError('no patch_embed.proj.weight after conversion: '
                              f'not a Swin backbone ({len(keys)} tensors)')
    stages = _numbers(r'stages\.(\d+)\.blocks\.', keys)
    if stages != list(range(4)):
        raise ConversionError(f'Swin stages {stages} after conversion: a '
                              'Swin has blocks in stages 0, 1, 2, 3')
    depths = [len(_numbers(rf'stages\.{s}\.blocks\.(\d+)\.', keys))
              for s in stages]
    merges = _numbers(r'stages\.(\d+)\.downsample\.reduction\.weight$', keys)
    want = [1, 2, 3] if v2 else [0, 1, 2]
    missing = [f'stages.{s}.downsample' for s in want if s not in merges]
    missing += [k for k in ('norm3.weight', 'patch_embed.norm.weight')
                if k not in state_dict]
    heads = []
    for s in stages:
        attn = f'stages.{s}.blocks.0.attn.w_msa.'
        head_key = attn + ('logit_scale' if v2 else _TABLE)
        if head_key not in state_dict:
            missing.append(head_key)
            continue
        t = state_dict[head_key]
        heads.append(int(t.shape[0] if v2 else t.shape[1]))
    if missing:
        raise ConversionError(
            f'not a complete Swin{" V2" if v2 else ""}: missing '
            f'{", ".join(missing[:4])}' + (f' (+{len(missing) - 4})'
                                           if len(missing) > 4 else ''))
    dim = int(proj.shape[0])
    fc1 = state_dict['stages.0.blocks.0.ffn.layers.0.0.weight']
    hidden = int(fc1.shape[0])
    window = None
    if not v2:
        window = _window_of(int(state_dict['stages.0.blocks.0.attn.w_msa.'
                                           + _TABLE].shape[0]))
    return dict(embed_dims=dim, depths=depths, num_heads=heads,
                patch_size=int(proj.shape[2]), in_channels=int(proj.shape[1]),
                window_size=window, mlp_ratio=hidden / dim,
                qkv_bias='stages.0.blocks.0.attn.w_msa.qkv.bias' in state_dict)


def _source_v2_window(conv: 'Conversion') -> Optional[int]:
    """The pre-training window of a V2 file (its coordinate table, or the
    ``window_size`` of a transformers folder's config.json), if any."""
    for key, value in conv.source.items():
        if key.endswith('relative_coords_table') and value.dim() == 4:
            return (int(value.shape[1]) + 1) // 2
    cfg = conv.entries.get('config') if conv.entries else None
    if isinstance(cfg, dict) and isinstance(cfg.get('window_size'), int):
        return cfg['window_size']
    return None


def swin_architecture(conv: 'Conversion', request: 'Request') -> None:
    """Family step: record the result's arguments (``meta['swin']``,
    summary line, notes on fresh norms, config hints); the target module
    checked it is one Swin."""
    v2 = conv.family.name == 'swinv2'
    args = infer_swin(conv.state_dict, v2)
    if v2:
        args['window_size'] = _source_v2_window(conv)
    conv.meta['swin'] = dict(args)
    window = args['window_size']
    conv.lines.append(
        f'swin:     {"V2 " if v2 else ""}embed_dims={args["embed_dims"]} '
        f'depths={tuple(args["depths"])} '
        f'num_heads={tuple(args["num_heads"])} '
        f'patch_size={args["patch_size"]} '
        f'window_size={window if window else "not recorded"} '
        f'mlp_ratio={args["mlp_ratio"]:g}')
    fresh = [f'norm{i}' for i in range(3)
             if f'norm{i}.weight' not in conv.state_dict]
    if fresh:
        conv.notes.append(
            'the final norm is loaded as norm3 (last stage of the pyramid); '
            f'{", ".join(fresh)} have no pre-trained counterpart and keep '
            'their initialisation (LayerNorm weight 1, bias 0)')
    if not v2:
        conv.notes.append(
            "MMDetection's SwinTransformer shifts the windows of every odd "
            'block, also in a stage no larger than one window, where the '
            'official model does not (the last stage at the pre-training '
            'resolution): that stage computes differently there; at '
            'detection resolutions both shift')
    if v2:
        conv.notes.append(
            'mmpretrain SwinTransformerV2 rebuilds relative_coords_table and '
            'relative_position_index from window_size and '
            'pretrained_window_sizes: set pretrained_window_sizes to the '
            'pre-training window when the detector uses another window')
    conv.hints = lambda dst: _hints(args, v2, dst)


def _hints(args: Dict[str, Any], v2: bool, dst: str) -> str:
    """The config lines that use the converted file."""
    widths = [args['embed_dims'] * 2**i for i in range(4)]
    common = (f"embed_dims={args['embed_dims']}, "
              f"depths={list(args['depths'])}, "
              f"num_heads={list(args['num_heads'])}")
    init = f"init_cfg=dict(type='SelfSupPretrained', checkpoint='{dst}')"
    lines = ["custom_imports = dict(imports=['mmconv'], "
             'allow_failed_imports=False)']
    if v2:
        window = args['window_size'] or 8
        if not args['window_size']:
            lines.append('# the weights do not record the window: 8 is '
                         "timm's swinv2_*_window8_*; use the file's")
        lines += [
            "model = dict(backbone=dict(_delete_=True, "
            "type='mmpretrain.SwinTransformerV2',",
            f"    arch=dict(embed_dims={args['embed_dims']}, "
            f"depths={list(args['depths'])}, "
            f"num_heads={list(args['num_heads'])}, "
            'extra_norm_every_n_blocks=0),',
            f'    window_size={window}, pretrained_window_sizes='
            f'[{window}] * 4, out_indices=(0, 1, 2, 3),',
            f'    {init}),',
            f'    neck=dict(in_channels={widths}))',
        ]
    else:
        window = args['window_size'] or 7
        lines += [
            f"model = dict(backbone=dict(type='SwinTransformer', {common},",
            f'    window_size={window}, convert_weights=False,',
            f'    {init}),',
            f'    neck=dict(in_channels={widths}))',
            "# MMDetection's SwinTransformer keeps only 'backbone.' keys of a "
            "plain Pretrained file: use SelfSupPretrained (mmconv imported)",
        ]
    return '\n'.join(lines)


def _swin_kwargs(state_dict: Dict[str, 'torch.Tensor']) -> Dict[str, Any]:
    """MMDetection ``SwinTransformer`` arguments that give the result's
    tensors."""
    args = infer_swin(state_dict, False)
    if args['window_size'] is None:
        table = state_dict['stages.0.blocks.0.attn.w_msa.' + _TABLE]
        raise ConversionError(
            f'stages.0.blocks.0.attn.w_msa.{_TABLE} {list(table.shape)}: '
            'not the (2W - 1)^2 rows of a window W: not a Swin backbone')
    ratio = args['mlp_ratio']
    if ratio != int(ratio):
        raise ConversionError(
            f'MLP ratio {ratio:g} (stages.0.blocks.0.ffn): MMDetection\'s '
            'SwinTransformer builds integer ratios only')
    return dict(in_channels=args['in_channels'],
                embed_dims=args['embed_dims'],
                patch_size=args['patch_size'],
                window_size=args['window_size'],
                mlp_ratio=int(ratio), depths=tuple(args['depths']),
                num_heads=tuple(args['num_heads']),
                strides=(args['patch_size'], 2, 2, 2),
                out_indices=(0, 1, 2, 3), qkv_bias=args['qkv_bias'],
                drop_path_rate=0.)


def _swinv2_kwargs(state_dict: Dict[str, 'torch.Tensor']
                   ) -> Dict[str, Any]:
    """mmpretrain ``SwinTransformerV2`` arguments that give the result's
    tensors (the window shapes none of them)."""
    args = infer_swin(state_dict, True)
    return dict(arch=dict(embed_dims=args['embed_dims'],
                          depths=list(args['depths']),
                          num_heads=list(args['num_heads']),
                          extra_norm_every_n_blocks=0),
                in_channels=args['in_channels'],
                patch_size=args['patch_size'], out_indices=(0, 1, 2, 3),
                drop_path_rate=0.)


def _what(args: Dict[str, Any]) -> str:
    arch = args.get('arch', args)
    return (f'Swin{" V2" if "arch" in args else ""} (embed_dims='
            f'{arch["embed_dims"]}, depths={list(arch["depths"])})')


#: The modules Swin results are loaded into and checked against
#: (:mod:`mmconv.verify`), with the arguments the weights imply:
#: MMDetection's ``SwinTransformer`` and mmpretrain's
#: ``SwinTransformerV2`` (its MLP ratio, 4, is fixed).
SWIN_MODULE = TargetModule('mmdet.models.backbones.swin:SwinTransformer',
                           _swin_kwargs, _what)
SWINV2_MODULE = TargetModule(
    'mmpretrain.models.backbones.swin_transformer_v2:SwinTransformerV2',
    _swinv2_kwargs, _what)

# --- declarations ------------------------------------------------------------
#: ``Family.never_pretrained``: ``norm0``-``norm2`` (no pre-trained
#: counterpart: they keep weight 1, bias 0) and the buffers the targets
#: rebuild; ``SelfSupPretrained`` does not count them against its coverage.
_NEVER = (r'^norm[0-2]\.(?:weight|bias)$',
          r'(?:^|\.)attn\.w_msa\.relative_position_index$')
_SELF_LOADING_SWIN = 'mmdet.models.backbones.swin:SwinTransformer'

#: ``Family.fit_options``: ``--window-size N`` applies :data:`WINDOW_RULES`
#: with the shapes :func:`window_shapes` gives.
_WINDOW = (OptionFit('window_size', WINDOW_RULES, window_shapes), )

SWIN_FAMILY = Family(
    'swin', 'Swin Transformer backbone', options=('prefix', 'window_size'),
    finish=(window_option, swin_architecture),
    targets=('mmdet', ), never_pretrained=_NEVER, fit=FIT_RULES,
    self_loading=(_SELF_LOADING_SWIN, ), fit_options=_WINDOW,
    module=SWIN_MODULE)
SWINV2_FAMILY = Family(
    'swinv2', 'Swin Transformer V2 backbone',
    options=('prefix', 'window_size'),
    finish=(window_option, swin_architecture),
    targets=('mmdet', ),
    never_pretrained=_NEVER + (
        r'(?:^|\.)attn\.w_msa\.relative_coords_table$', ),
    fit_options=_WINDOW, module=SWINV2_MODULE)

_T1 = r'layers\.0\.blocks\.0\.attn\.relative_position_bias_table$'
_T2 = r'layers\.0\.blocks\.0\.attn\.cpb_mlp\.0\.weight$'
_END0 = r'layers\.0\.downsample\.reduction\.weight$'
_START1 = r'layers\.1\.downsample\.reduction\.weight$'

_MMDET_STAGE0 = r'^(?:backbone\.)?stages\.0\.'

# fmt: off
SWIN_FORMATS: Tuple[SourceFormat, ...] = (
    SourceFormat(
        'swin', 'swin', 'Swin Transformer (official, released or training)',
        rules=SWIN_RULES,
        sentinels=('^' + _T1, '^' + _END0, r'^patch_embed\.proj\.weight$'),
        containers=('model', ),
        released=('swin_tiny_patch4_window7_224.pth', 'swin_small_patch4_window7_224.pth',
                  'swin_base_patch4_window7_224_22k.pth', 'swin_base_patch4_window12_384.pth',
                  'ckpt_epoch_299.pth'),
        source='microsoft/Swin-Transformer: models/swin_transformer.py; utils.save_checkpoint saves {model, optimizer, lr_scheduler, max_accuracy, epoch, config (yacs)}'),
    SourceFormat(
        'swinv2', 'swinv2', 'Swin Transformer V2 (official)',
        rules=SWINV2_RULES,
        sentinels=('^' + _T2, '^' + _END0, r'^layers\.0\.blocks\.0\.attn\.logit_scale$'),
        containers=('model', ),
        released=('swinv2_tiny_patch4_window8_256.pth', 'swinv2_base_patch4_window12_192_22k.pth'),
        source='microsoft/Swin-Transformer: models/swin_transformer_v2.py (res-post-norm, cosine attention, cpb_mlp)'),
    SourceFormat(
        'simmim', 'swin', 'SimMIM Swin pre-training (encoder + decoder)',
        rules=SIMMIM_RULES,
        sentinels=(r'^encoder\.mask_token$', r'^encoder\.' + _T1),
        containers=('model', ),
        released=('simmim_pretrain__swin_base__img192_window6__800ep.pth', ),
        source='microsoft/SimMIM: models/simmim.py SimMIM(encoder=SwinTransformerForSimMIM, decoder=Conv2d+PixelShuffle); utils.save_checkpoint {model, optimizer, lr_scheduler, scaler, epoch, config}'),
    SourceFormat(
        'simmim_swinv2', 'swinv2', 'SimMIM Swin V2 pre-training (encoder + decoder)',
        rules=SIMMIM_SWINV2_RULES,
        sentinels=(r'^encoder\.mask_token$', r'^encoder\.' + _T2),
        containers=('model', ),
        source='microsoft/Swin-Transformer: models/simmim.py SwinTransformerV2ForSimMIM'),
    SourceFormat(
        'timm_swin', 'swin', 'timm Swin Transformer',
        rules=TIMM_SWIN_RULES,
        sentinels=('^' + _T1, '^' + _START1),
        containers=('state_dict', 'model'),
        source='huggingface/pytorch-image-models: timm/models/swin_transformer.py (downsample at the start of a stage, head.fc)'),
    SourceFormat(
        'timm_swinv2', 'swinv2', 'timm Swin Transformer V2',
        rules=TIMM_SWINV2_RULES,
        sentinels=('^' + _T2, '^' + _START1),
        containers=('state_dict', 'model'),
        source='huggingface/pytorch-image-models: timm/models/swin_transformer_v2.py'),
    SourceFormat(
        'mmdet_swin', 'swin', 'MMDetection SwinTransformer (converted, or a detector)',
        rules=MMDET_SWIN_RULES,
        sentinels=(_MMDET_STAGE0 + r'blocks\.0\.attn\.w_msa\.relative_position_bias_table$',
                   _MMDET_STAGE0 + r'downsample\.reduction\.weight$'),
        containers=('state_dict', ),
        source="open-mmlab/mmdetection: SwinTransformer state dicts (mmconv output, tools/model_converters/swin2mmdet.py output, a detector's backbone.*)"),
    SourceFormat(
        'mmpretrain_swinv2', 'swinv2', 'mmpretrain SwinTransformerV2 (converted, or a classifier)',
        rules=MMPRETRAIN_SWINV2_RULES,
        sentinels=(_MMDET_STAGE0 + r'blocks\.0\.attn\.w_msa\.cpb_mlp\.0\.weight$',
                   r'^(?:backbone\.)?stages\.1\.downsample\.reduction\.weight$'),
        containers=('state_dict', ),
        source='open-mmlab/mmpretrain: SwinTransformerV2 state dicts (mmconv output, ImageClassifier checkpoints backbone.* + head.*)'),
)
# fmt: on

register(SWIN_FAMILY, SWINV2_FAMILY, *SWIN_FORMATS)


# --- Hugging Face transformers (SwinModel, Swinv2Model, *ForImage...) -------
# transformers' save_pretrained layout (convert_swin_timm_to_pytorch.py and
# convert_swinv2_timm_to_pytorch.py map timm's names to these): blocks under
# encoder.layers.N.blocks.M with separate query/key/value linears,
# ``downsample`` ending stage N (as the official code), the final
# ``layernorm``; ``*ForImageClassification`` adds the ``swin.`` /
# ``swinv2.`` prefix and ``classifier``. 4.x also saves v1's
# relative_position_index buffers; 5.x saves no buffer.
_HF_BLOCK = r'encoder\.layers\.(\d+)\.blocks\.(\d+)\.'
_HF_QKV_WHY = ('{what}: attention query, key, value linears fused into qkv '
               '(q, k, v order)')


def _hf_rules(model: str, what: str, v2: bool) -> Tuple[Rule, ...]:
    """transformers' Swin (``model='swin'``) or Swin V2 (``'swinv2'``)
    names -> the family's canonical names."""
    pre = rf'^(?:{model}\.)?'
    b = pre + _HF_BLOCK
    a = b + r'attention\.self\.'
    fused = _HF_QKV_WHY.format(what=what)
    if v2:
        # Swinv2SelfAttention: key has no bias; q and v biases are
        # mmpretrain WindowMSAV2's q_bias / v_bias beside a bias-free qkv
        attention: Tuple[Rule, ...] = (
            Rule(a + r'(?P<part>query|key|value)\.weight$',
                 _S + 'attn.w_msa.qkv.weight', fused, ops=(Concatenate(0), ),
                 parts=('query', 'key', 'value')),
            (a + r'query\.bias$', _S + 'attn.w_msa.q_bias',
             f'{what}: query bias = q_bias'),
            (a + r'value\.bias$', _S + 'attn.w_msa.v_bias',
             f'{what}: value bias = v_bias'),
            (a + r'logit_scale$', _S + 'attn.w_msa.logit_scale',
             f'{what}: cosine attention logit scale'),
            (a + r'continuous_position_bias_mlp\.(\d+)\.',
             _S + r'attn.w_msa.cpb_mlp.\3.',
             f'{what}: continuous position bias MLP (cpb_mlp)'),
        )
    else:
        attention = (
            Rule(a + r'(?P<part>query|key|value)\.(weight|bias)$',
                 _S + r'attn.w_msa.qkv.\4', fused, ops=(Concatenate(0), ),
                 parts=('query', 'key', 'value')),
            (a + r'relative_position_bias_table$',
             _S + 'attn.w_msa.relative_position_bias_table',
             f'{what}: relative position bias table'),
            # transformers 5 module names (model.state_dict(); its
            # save_pretrained writes the 4.x names above)
            Rule(b + r'attention\.(?P<part>q_proj|k_proj|v_proj)\.'
                 r'(weight|bias)$', _S + r'attn.w_msa.qkv.\4',
                 fused.replace('query, key, value', 'q_proj, k_proj, v_proj'),
                 ops=(Concatenate(0), ), parts=('q_proj', 'k_proj', 'v_proj')),
            (b + r'attention\.relative_position_bias\.'
             r'relative_position_index$', None, _INDEX_WHY),
            (b + r'attention\.relative_position_bias\.'
             r'relative_position_bias_table$',
             _S + 'attn.w_msa.relative_position_bias_table',
             f'{what}: relative position bias table'),
            (b + r'attention\.o_proj\.', _S + 'attn.w_msa.proj.',
             f'{what}: attention output projection (o_proj)'),
            (b + r'mlp\.fc1\.', _S + 'ffn.layers.0.0.',
             f'{what}: MLP fc1'),
            (b + r'mlp\.fc2\.', _S + 'ffn.layers.1.', f'{what}: MLP fc2'),
        )
    return (
        (a + r'relative_position_index$', None, _INDEX_WHY),
        (a + r'relative_coords_table$', None, _COORDS_WHY),
    ) + attention + (
        (b + r'attention\.output\.dense\.', _S + 'attn.w_msa.proj.',
         f'{what}: attention output projection'),
        (b + r'layernorm_before\.', _S + 'norm1.',
         f'{what}: block norm (layernorm_before = norm1)'),
        (b + r'layernorm_after\.', _S + 'norm2.',
         f'{what}: block norm (layernorm_after = norm2)'),
        (b + r'intermediate\.dense\.', _S + 'ffn.layers.0.0.',
         f'{what}: MLP fc1 (intermediate.dense)'),
        (b + r'output\.dense\.', _S + 'ffn.layers.1.',
         f'{what}: MLP fc2 (output.dense)'),
    ) + _downsample(pre + r'encoder\.', 0, 1 if v2 else 0, what, v2) + (
        (pre + r'embeddings\.patch_embeddings\.projection\.',
         'patch_embed.projection.', f'{what}: patch embedding'),
        (pre + r'embeddings\.norm\.', 'patch_embed.norm.',
         f'{what}: patch embedding norm'),
        (pre + r'embeddings\.position_embeddings$', 'absolute_pos_embed',
         f'{what}: absolute position embedding '
         '(use_absolute_embeddings=True)'),
        (pre + r'embeddings\.mask_token$', None,
         'mask token (masked-image-modelling input of '
         f'{model.capitalize()}ForMaskedImageModeling)'),
        (pre + r'layernorm\.', 'norm3.',
         f'{what}: final layernorm = output norm of the last stage (norm3 '
         'of the pyramid, out_indices (0, 1, 2, 3))'),
        (r'^classifier\.', None, 'ImageNet classifier (classifier)'),
        (r'^decoder\.', None, 'masked-image-modelling decoder (1x1 conv + '
         'pixel shuffle)'),
    )


HF_SWIN_RULES = _hf_rules('swin', 'transformers Swin', False)
HF_SWINV2_RULES = _hf_rules('swinv2', 'transformers Swin V2', True)


def _hf_heads(conv: 'Conversion', v2: bool) -> List[int]:
    """Heads per stage the converted weights hold (block 0 of each)."""
    heads = []
    for s in range(4):
        attn = f'stages.{s}.blocks.0.attn.w_msa.'
        t = conv.state_dict.get(attn + ('logit_scale' if v2 else _TABLE))
        if t is not None:
            heads.append(int(t.shape[0] if v2 else t.shape[1]))
    return heads


def hf_swin_config(conv: 'Conversion', request: 'Request') -> None:
    """Format step (transformers folders): the ``config.json`` beside the
    weights must describe them (heads, window, widths); it supplies what
    the weights cannot say (Swin V2's window, its pre-training windows),
    as notes. A lone weight file has no config: nothing to do."""
    cfg = conv.entries.get('config') if conv.entries else None
    if not isinstance(cfg, dict):
        return
    v2 = conv.family.name == 'swinv2'
    facts = []
    heads = _hf_heads(conv, v2)
    if isinstance(cfg.get('num_heads'), list):
        facts.append(('num_heads', list(cfg['num_heads'])[:len(heads)],
                      heads))
    proj = conv.state_dict.get('patch_embed.projection.weight')
    if proj is not None and isinstance(cfg.get('embed_dim'), int):
        facts.append(('embed_dim', cfg['embed_dim'], int(proj.shape[0])))
    table = conv.state_dict.get('stages.0.blocks.0.attn.w_msa.' + _TABLE)
    window = cfg.get('window_size')
    if not v2 and table is not None and isinstance(window, int):
        facts.append(('window_size', window, _window_of(table.shape[0])))
    check_config(facts)
    if v2 and isinstance(window, int):
        pretrained = cfg.get('pretrained_window_sizes') or []
        conv.notes.append(
            f'config.json: window_size={window}' + (
                f', pretrained_window_sizes={list(pretrained)}: set both '
                'in the mmpretrain SwinTransformerV2 config'
                if any(pretrained) else
                ' (pretrained_window_sizes all 0: build with '
                f'window_size={window}, pretrained_window_sizes=[{window}] '
                '* 4 or [0] * 4)'))


_HF_T1 = _HF_BLOCK.replace(r'(\d+)', '0') + \
    r'attention\.(?:self|relative_position_bias)\.' \
    r'relative_position_bias_table$'
_HF_T2 = _HF_BLOCK.replace(r'(\d+)', '0') + \
    r'attention\.self\.continuous_position_bias_mlp\.0\.weight$'
_HF_STEM = r'embeddings\.patch_embeddings\.projection\.weight$'
_HF_END0 = r'encoder\.layers\.0\.downsample\.reduction\.weight$'

# fmt: off
HF_SWIN_FORMATS: Tuple[SourceFormat, ...] = (
    SourceFormat(
        'hf_swin', 'swin', 'Hugging Face transformers Swin (SwinModel, SwinForImageClassification)',
        rules=HF_SWIN_RULES,
        sentinels=(r'^(?:swin\.)?' + _HF_T1, r'^(?:swin\.)?' + _HF_STEM, r'^(?:swin\.)?' + _HF_END0),
        containers=('state_dict', ),
        surgery=(hf_swin_config, ),
        released=('microsoft/swin-tiny-patch4-window7-224 (model.safetensors + config.json)',
                  'microsoft/swin-base-patch4-window12-384-in22k'),
        source='huggingface/transformers: models/swin/modeling_swin.py, convert_swin_timm_to_pytorch.py (timm -> transformers names); 4.x saves relative_position_index, 5.x no buffer'),
    SourceFormat(
        'hf_swinv2', 'swinv2', 'Hugging Face transformers Swin V2 (Swinv2Model, Swinv2ForImageClassification)',
        rules=HF_SWINV2_RULES,
        sentinels=(r'^(?:swinv2\.)?' + _HF_T2, r'^(?:swinv2\.)?' + _HF_STEM, r'^(?:swinv2\.)?' + _HF_END0),
        containers=('state_dict', ),
        surgery=(hf_swin_config, ),
        released=('microsoft/swinv2-tiny-patch4-window8-256 (model.safetensors + config.json)', ),
        source='huggingface/transformers: models/swinv2/modeling_swinv2.py, convert_swinv2_timm_to_pytorch.py'),
)
# fmt: on

register(*HF_SWIN_FORMATS)
