# Copyright (c) mmconv contributors. All rights reserved.
"""ConvNeXt v1 / v2 (official, FCMAE, DINOv3, timm, transformers,
mmpretrain) -> ``mmpretrain.ConvNeXt`` as MMDetection uses it.

The ``convnext`` family (:data:`CONVNEXT_FAMILY`; target module, whose names
are the canonical ones: :data:`CONVNEXT_MODULE`). Rules: ``*_RULES``
(:data:`CONVNEXT_FORMATS`, :data:`DINOV3_CONVNEXT_FORMATS`,
:data:`HF_CONVNEXT_FORMATS`); tensor changes: :data:`GRN`,
:data:`SPARSE_CONV`, :data:`POINTWISE`. Users: README, "ConvNeXt v1 / v2".
"""
import re
from typing import Any, Dict, List, Optional, Tuple

from ..errors import ConversionError
from ..ops import DensifySparseKernel, Flatten, ToVector
from ..spec import (Conversion, Family, Request, Rule, SourceFormat,
                    TargetModule, check_config, register)

__all__ = [
    'CONVNEXT_FAMILY', 'CONVNEXT_FORMATS', 'ARCH_SETTINGS',
    'convnext_architecture', 'infer_convnext'
]

#: mmpretrain ``ConvNeXt.arch_settings`` (the official models' depths and
#: channels; ConvNeXt-V2 adds atto ... nano, huge).
ARCH_SETTINGS: Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...]]] = {
    'atto': ((2, 2, 6, 2), (40, 80, 160, 320)),
    'femto': ((2, 2, 6, 2), (48, 96, 192, 384)),
    'pico': ((2, 2, 6, 2), (64, 128, 256, 512)),
    'nano': ((2, 2, 8, 2), (80, 160, 320, 640)),
    'tiny': ((3, 3, 9, 3), (96, 192, 384, 768)),
    'small': ((3, 3, 27, 3), (96, 192, 384, 768)),
    'base': ((3, 3, 27, 3), (128, 256, 512, 1024)),
    'large': ((3, 3, 27, 3), (192, 384, 768, 1536)),
    'xlarge': ((3, 3, 27, 3), (256, 512, 1024, 2048)),
    'huge': ((3, 3, 27, 3), (352, 704, 1408, 2816)),
}

_BLOCK = r'stages.\1.\2.'

# --- the tensor changes the rules declare ---------------------------------
_GRN_SHAPES = 'a GRN parameter is [C], [1, C] or [1, 1, 1, C]'
_GRN_WHY = 'grn_to_vector: GRN {shape} -> [C] (mmpretrain GRN)'
#: ``grn_to_vector``: GRN ``gamma`` / ``beta`` -> mmpretrain's ``[C]`` (the
#: official dense GRN stores ``[1, 1, 1, C]``, ConvNeXt-V2
#: ``models/utils.GRN``; the sparse one ``[1, C]``, ``MinkowskiGRN``;
#: mmpretrain's ``GRN`` broadcasts ``[C]`` itself, mmpretrain#1957); values
#: and order kept, any other shape refused.
GRN = (ToVector(_GRN_WHY, _GRN_SHAPES), )
#: ``densify_sparse_kernels``: ConvNeXt-V2 ``utils.remap_checkpoint_keys``
#: (what ``main_finetune.py`` applies to the released FCMAE files).
SPARSE_CONV = (DensifySparseKernel(
    'densify_sparse_kernels: MinkowskiConvolution kernel [k*k, in, out] -> '
    '[out, in, k, k] (remap_checkpoint_keys)'), )
SPARSE_DEPTHWISE = (DensifySparseKernel(
    'densify_sparse_kernels: MinkowskiDepthwiseConvolution kernel [k*k, C] '
    '-> [C, 1, k, k] (remap_checkpoint_keys)'), )
SPARSE_BIAS = (ToVector('densify_sparse_kernels: MinkowskiEngine bias '
                        '[1, C] -> [C]', ndim=2, leading=False), )
#: ``flatten_pointwise_convs``: timm ``conv_mlp=True`` (mmpretrain
#: ``linear_pw_conv=False``) 1x1 conv ``[out, in, 1, 1]`` -> the linear
#: ``[out, in]`` of mmpretrain's ``linear_pw_conv=True`` (same values).
POINTWISE = (Flatten('flatten_pointwise_convs: 1x1 conv [out, in, 1, 1] -> '
                     'linear [out, in]'), )

# fmt: off
#: facebookresearch/ConvNeXt models/convnext.py and ConvNeXt-V2
#: models/convnextv2.py (same names; v2 has grn, no gamma)
OFFICIAL_RULES: Tuple[Rule, ...] = (
    (r'^downsample_layers\.0\.([01])\.',          r'downsample_layers.0.\1.', 'stem: 4x4 patch conv (0), LayerNorm (1)'),
    (r'^downsample_layers\.([1-9])\.([01])\.',    r'downsample_layers.\1.\2.', 'downsample layer: LayerNorm (0), 2x2 conv (1)'),
    (r'^stages\.(\d+)\.(\d+)\.dwconv\.',          _BLOCK + 'depthwise_conv.', 'block 7x7 depthwise conv (dwconv)'),
    (r'^stages\.(\d+)\.(\d+)\.norm\.',            _BLOCK + 'norm.',           'block LayerNorm'),
    (r'^stages\.(\d+)\.(\d+)\.pwconv([12])\.',    _BLOCK + r'pointwise_conv\3.', 'block pointwise linear (pwconv1/2)'),
    (r'^stages\.(\d+)\.(\d+)\.gamma$',            _BLOCK + 'gamma',           'layer scale (gamma)'),
    Rule(r'^stages\.(\d+)\.(\d+)\.grn\.(gamma|beta)$', _BLOCK + r'grn.\3',    'GRN gamma/beta ([1, 1, 1, C] -> [C], grn_to_vector)', ops=GRN),
    (r'^norm\.',                                  'norm3.',                    'final norm -> norm3 (mmpretrain convnext_to_mmpretrain.py), applied to the C5 map'),
    (r'^head\.',                                  None,                        'ImageNet classifier (head)'),
)

_ENC = r'^encoder\.'
#: ConvNeXt-V2 models/fcmae.py FCMAE(encoder=SparseConvNeXtV2, proj,
#: mask_token, decoder, pred); MinkowskiEngine module names
FCMAE_RULES: Tuple[Rule, ...] = (
    (_ENC + r'downsample_layers\.0\.([01])\.',            r'downsample_layers.0.\1.', 'stem: dense 4x4 patch conv (0), LayerNorm (1)'),
    (_ENC + r'downsample_layers\.([1-9])\.0\.ln\.',       r'downsample_layers.\1.0.', 'downsample MinkowskiLayerNorm (.ln)'),
    Rule(_ENC + r'downsample_layers\.([1-9])\.1\.kernel$', r'downsample_layers.\1.1.weight', 'downsample sparse 2x2 conv kernel [k*k, in, out] (densify_sparse_kernels)', ops=SPARSE_CONV),
    Rule(_ENC + r'downsample_layers\.([1-9])\.1\.bias$',   r'downsample_layers.\1.1.bias', 'downsample sparse conv bias [1, C] (densify_sparse_kernels)', ops=SPARSE_BIAS),
    Rule(_ENC + r'stages\.(\d+)\.(\d+)\.dwconv\.kernel$',  _BLOCK + 'depthwise_conv.weight', 'sparse depthwise conv kernel [k*k, C] (densify_sparse_kernels)', ops=SPARSE_DEPTHWISE),
    Rule(_ENC + r'stages\.(\d+)\.(\d+)\.dwconv\.bias$',    _BLOCK + 'depthwise_conv.bias', 'sparse depthwise conv bias [1, C] (densify_sparse_kernels)', ops=SPARSE_BIAS),
    (_ENC + r'stages\.(\d+)\.(\d+)\.norm\.ln\.',          _BLOCK + 'norm.',           'block MinkowskiLayerNorm (.ln)'),
    (_ENC + r'stages\.(\d+)\.(\d+)\.pwconv([12])\.linear\.', _BLOCK + r'pointwise_conv\3.', 'block MinkowskiLinear (.linear)'),
    Rule(_ENC + r'stages\.(\d+)\.(\d+)\.grn\.(gamma|beta)$', _BLOCK + r'grn.\3',     'MinkowskiGRN gamma/beta ([1, C] -> [C], grn_to_vector)', ops=GRN),
    (r'^mask_token$',                                     None,                        'FCMAE mask token (decoder input)'),
    (r'^proj\.',                                          None,                        'FCMAE decoder projection (proj)'),
    (r'^decoder\.',                                       None,                        'FCMAE decoder blocks'),
    (r'^pred\.',                                          None,                        'FCMAE pixel prediction (pred)'),
)

_TB = r'^stages\.(\d+)\.blocks\.(\d+)\.'
#: timm models/convnext.py ConvNeXt (checkpoint_filter_fn is the inverse)
TIMM_RULES: Tuple[Rule, ...] = (
    (r'^stem\.([01])\.',                        r'downsample_layers.0.\1.', 'stem: patch conv (0), LayerNorm2d (1)'),
    (r'^stages\.([1-9])\.downsample\.([01])\.',  r'downsample_layers.\1.\2.', 'downsample layer: LayerNorm2d (0), 2x2 conv (1)'),
    (_TB + r'conv_dw\.',                        _BLOCK + 'depthwise_conv.', 'block depthwise conv (conv_dw)'),
    (_TB + r'norm\.',                           _BLOCK + 'norm.',           'block norm'),
    Rule(_TB + r'mlp\.fc([12])\.weight$',        _BLOCK + r'pointwise_conv\3.weight', 'block MLP (fc1/fc2; conv_mlp 1x1 convs flattened)', ops=POINTWISE),
    (_TB + r'mlp\.fc([12])\.',                  _BLOCK + r'pointwise_conv\3.', 'block MLP (fc1/fc2; conv_mlp 1x1 convs flattened)'),
    Rule(_TB + r'mlp\.grn\.weight$',            _BLOCK + 'grn.gamma',       'GRN weight = gamma', ops=GRN),
    Rule(_TB + r'mlp\.grn\.bias$',              _BLOCK + 'grn.beta',        'GRN bias = beta', ops=GRN),
    (_TB + r'gamma$',                           _BLOCK + 'gamma',           'layer scale (gamma)'),
    (r'^(?:head\.norm|norm_pre)\.',             'norm3.',                    'final norm (head.norm, or norm_pre with head_norm_first) -> norm3'),
    (r'^head\.(?:fc|pre_logits)\.',             None,                        'ImageNet classifier (head.fc / head.pre_logits)'),
)

_MMP = r'^(?:backbone\.)?'
#: mmpretrain ConvNeXt (ImageClassifier: backbone.*, head.*)
MMPRETRAIN_RULES: Tuple[Rule, ...] = (
    (_MMP + r'(downsample_layers\.\d+\.[01]\.)', r'\1', 'stem / downsample layers'),
    Rule(_MMP + r'(stages\.\d+\.\d+\.pointwise_conv[12]\.weight)$', r'\1', 'ConvNeXt blocks', ops=POINTWISE),
    Rule(_MMP + r'(stages\.\d+\.\d+\.grn\.(?:gamma|beta))$', r'\1', 'ConvNeXt blocks', ops=GRN),
    (_MMP + r'(stages\.\d+\.\d+\.)',             r'\1', 'ConvNeXt blocks'),
    (_MMP + r'(norm\d+\.)',                      r'\1', 'output norms'),
    (r'^head\.',                                 None,  'classifier head'),
    (r'^neck\.',                                 None,  'neck'),
    (r'^data_preprocessor\.',                    None,  'data preprocessor buffers'),
)
# fmt: on


# --- what the weights imply ------------------------------------------------
def _arch_name(depths: List[int], channels: List[int]) -> Optional[str]:
    """mmpretrain's ``arch`` name of ``depths`` / ``channels`` (or None)."""
    for name, (d, c) in ARCH_SETTINGS.items():
        if list(d) == depths and list(c) == channels:
            return name
    return None


def infer_convnext(state_dict: Dict[str, Any]) -> Dict[str, Any]:
    """The ``mmpretrain.ConvNeXt`` arguments a converted state dict implies.

    Args:
        state_dict (dict): mmpretrain-named tensors.

    Returns:
        dict: ``arch`` (mmpretrain name or None), ``depths``, ``channels``,
        ``in_channels``, ``stem_patch_size``, ``kernel_size``,
        ``mlp_ratio``, ``use_grn``, ``layer_scale`` (bool), ``final_norm``
        (whether the last stage's norm, ``norm3``, is in the file),
        ``norms`` (the stages whose output norm is in the file: the last
        for official files, all for MMDetection backbones).

    Raises:
        ConversionError: The tensors the arguments are read from are
            missing (the rest is checked against ``mmpretrain.ConvNeXt``
            itself, :data:`CONVNEXT_MODULE`).
    """
    stem = state_dict.get('downsample_layers.0.0.weight')
    if stem is None or stem.dim() != 4:
        raise ConversionError(
            'no stem conv downsample_layers.0.0.weight [C, in, p, p] after '
            f'conversion: not a ConvNeXt backbone ({len(state_dict)} tensors)')
    blocks: Dict[int, set] = {}
    for key in state_dict:
        m = re.match(r'stages\.(\d+)\.(\d+)\.', key)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    stages = sorted(blocks)
    if not stages or stages != list(range(len(stages))):
        raise ConversionError(f'ConvNeXt stages {stages} are not numbered '
                              f'0..{len(stages) - 1}')
    depths = []
    for i in stages:
        if sorted(blocks[i]) != list(range(len(blocks[i]))):
            raise ConversionError(f'stage {i}: blocks {sorted(blocks[i])} '
                                  'are not numbered from 0')
        depths.append(len(blocks[i]))
    channels = []
    for i in stages:
        dw = state_dict.get(f'stages.{i}.0.depthwise_conv.weight')
        if dw is None or dw.dim() != 4:
            raise ConversionError(f'no stages.{i}.0.depthwise_conv.weight '
                                  '[C, 1, k, k]: not a ConvNeXt backbone')
        channels.append(int(dw.shape[0]))
    first = state_dict['stages.0.0.depthwise_conv.weight']
    fc1 = state_dict.get('stages.0.0.pointwise_conv1.weight')
    if fc1 is None:
        raise ConversionError('no stages.0.0.pointwise_conv1.weight: not a '
                              'ConvNeXt backbone')
    args = dict(
        arch=_arch_name(depths, channels), depths=depths, channels=channels,
        in_channels=int(stem.shape[1]), stem_patch_size=int(stem.shape[2]),
        kernel_size=int(first.shape[2]),
        mlp_ratio=int(fc1.shape[0]) / channels[0],
        use_grn='stages.0.0.grn.gamma' in state_dict,
        layer_scale='stages.0.0.gamma' in state_dict,
        final_norm=f'norm{len(stages) - 1}.weight' in state_dict,
        norms=[i for i in stages if f'norm{i}.weight' in state_dict])
    return args


def _yes(flag: bool) -> str:
    return 'yes' if flag else 'no'


def convnext_architecture(conv: 'Conversion', request: 'Request') -> None:
    """Family step: record the ``mmpretrain.ConvNeXt`` arguments the
    result implies (``meta['convnext']``, summary line, notes on the fresh
    output norms, config hints); :data:`CONVNEXT_MODULE` checked it is one
    ConvNeXt."""
    args = infer_convnext(conv.state_dict)
    conv.meta['convnext'] = dict(args)
    last = len(args['depths']) - 1
    conv.lines.append(
        f'convnext: arch={args["arch"] or "custom"} depths={args["depths"]} '
        f'channels={args["channels"]} grn={_yes(args["use_grn"])} '
        f'layer_scale={_yes(args["layer_scale"])} '
        f'final_norm={f"norm{last}" if args["final_norm"] else "none"}')
    fresh = [f'norm{i}' for i in range(last + 1) if i not in args['norms']]
    if fresh:
        conv.notes.append(
            f'{", ".join(fresh)} (per-output norms of mmpretrain ConvNeXt, '
            'out_indices=[0, 1, 2, 3]) have no counterpart in the file and '
            'keep their initialisation' + (
                f'; norm{last} is the final norm of the file'
                if args['final_norm'] else '; the file has no final norm'))
    if args['use_grn']:
        conv.notes.append('ConvNeXt V2 (GRN): build mmpretrain.ConvNeXt with '
                          'use_grn=True' + (
                              '' if args['layer_scale'] else
                              ', layer_scale_init_value=0.'))
    elif args['layer_scale']:
        conv.notes.append('layer scale is carried (stages.N.M.gamma): build '
                          'with layer_scale_init_value > 0 (any value, the '
                          'file replaces it)')
    conv.hints = lambda dst: _hints(args, dst)


def _hints(args: Dict[str, Any], dst: str) -> str:
    """The config lines that use the converted file."""
    arch = (f"'{args['arch']}'" if args['arch'] else
            f"dict(depths={args['depths']}, channels={args['channels']})")
    extra = ''
    if args['use_grn']:
        extra += ', use_grn=True'
    if not args['layer_scale']:
        extra += ', layer_scale_init_value=0.'
    return '\n'.join([
        "custom_imports = dict(imports=['mmconv'], "
        'allow_failed_imports=False)',
        "model = dict(backbone=dict(_delete_=True, type='mmpretrain.ConvNeXt',"
        f' arch={arch}{extra},',
        '    out_indices=[0, 1, 2, 3], gap_before_final_norm=False,',
        f"    init_cfg=dict(type='Pretrained', checkpoint='{dst}')),",
        f"    neck=dict(in_channels={args['channels']}))",
    ])


def _convnext_kwargs(state_dict: Dict[str, Any]) -> Dict[str, Any]:
    """The ``mmpretrain.ConvNeXt`` arguments that give the result's
    tensors (an output norm per stage, as MMDetection uses it)."""
    args = infer_convnext(state_dict)
    return dict(arch=dict(depths=list(args['depths']),
                          channels=list(args['channels'])),
                in_channels=args['in_channels'],
                stem_patch_size=args['stem_patch_size'],
                use_grn=args['use_grn'],
                layer_scale_init_value=1e-6 if args['layer_scale'] else 0.,
                out_indices=tuple(range(len(args['depths']))),
                gap_before_final_norm=False)


#: The module a ConvNeXt result is loaded into and checked against
#: (:mod:`mmconv.verify`): mmpretrain's ``ConvNeXt`` with the arguments the
#: weights imply (its kernel size, 7, and MLP ratio, 4, are fixed).
CONVNEXT_MODULE = TargetModule(
    'mmpretrain.models.backbones.convnext:ConvNeXt', _convnext_kwargs,
    lambda a: f'ConvNeXt (depths={a["arch"]["depths"]}, '
    f'channels={a["arch"]["channels"]})')

# --- declarations ----------------------------------------------------------
#: ``never_pretrained``: the per-output norms ``norm0``-``norm2``, which no
#: ConvNeXt checkpoint has (and ``norm3`` of FCMAE: no final norm).
CONVNEXT_FAMILY = Family(
    'convnext', 'ConvNeXt backbone', options=('select', 'prefix'),
    finish=(convnext_architecture, ),
    targets=('mmdet', ), never_pretrained=(r'^norm\d+\.(?:weight|bias)$', ),
    module=CONVNEXT_MODULE)

_STEM = r'^downsample_layers\.0\.0\.weight$'

# fmt: off
CONVNEXT_FORMATS: Tuple[SourceFormat, ...] = (
    SourceFormat(
        'convnext', 'convnext', 'ConvNeXt (official, facebookresearch/ConvNeXt)',
        rules=OFFICIAL_RULES,
        sentinels=(r'^stages\.0\.0\.dwconv\.weight$', _STEM),
        containers=('model', ),
        released=('convnext_tiny_1k_224_ema.pth', 'convnext_small_1k_224_ema.pth',
                  'convnext_base_1k_224_ema.pth', 'convnext_tiny_22k_224.pth',
                  'convnext_base_22k_1k_224.pth', 'checkpoint-best.pth'),
        source='facebookresearch/ConvNeXt: main.py / utils.save_model saves {model, optimizer, epoch, scaler, args[, model_ema]}; models/convnext.py'),
    SourceFormat(
        'convnextv2', 'convnext', 'ConvNeXt V2 fine-tuned (official, facebookresearch/ConvNeXt-V2)',
        rules=OFFICIAL_RULES,
        sentinels=(r'^stages\.0\.0\.dwconv\.weight$', _STEM,
                   r'^stages\.0\.0\.grn\.gamma$'),
        containers=('model', ),
        released=('convnextv2_tiny_1k_224_ema.pt', 'convnextv2_base_22k_224_ema.pt'),
        source='facebookresearch/ConvNeXt-V2: main_finetune.py / utils.save_model; models/convnextv2.py, models/utils.GRN ([1, 1, 1, C])'),
    SourceFormat(
        'convnextv2_fcmae', 'convnext', 'ConvNeXt V2 FCMAE pre-training (sparse encoder + decoder)',
        rules=FCMAE_RULES,
        sentinels=(r'^encoder\.stages\.0\.0\.dwconv\.kernel$',
                   r'^encoder\.downsample_layers\.0\.0\.weight$'),
        containers=('model', ),
        released=('convnextv2_tiny_1k_224_fcmae.pt', 'convnextv2_base_1k_224_fcmae.pt'),
        source='facebookresearch/ConvNeXt-V2: main_pretrain.py / utils.save_model; models/fcmae.py, models/convnextv2_sparse.py (MinkowskiEngine); utils.remap_checkpoint_keys'),
    SourceFormat(
        'timm_convnext', 'convnext', 'timm ConvNeXt / ConvNeXt V2',
        rules=TIMM_RULES,
        sentinels=(r'^stem\.0\.weight$', r'^stages\.0\.blocks\.0\.conv_dw\.weight$'),
        containers=('model', 'state_dict'),
        released=('convnext_tiny.fb_in1k (pytorch_model.bin / model.safetensors)',
                  'convnextv2_tiny.fcmae'),
        source='huggingface/pytorch-image-models timm/models/convnext.py (ConvNeXt, checkpoint_filter_fn)'),
    SourceFormat(
        'mmpretrain_convnext', 'convnext', 'mmpretrain ConvNeXt (classifier, MMDetection backbone, mmconv output)',
        rules=MMPRETRAIN_RULES,
        sentinels=(_MMP + r'stages\.0\.0\.depthwise_conv\.weight$',
                   _MMP + r'downsample_layers\.0\.0\.weight$'),
        released=('convnext-tiny_3rdparty_32xb128-noema_in1k_20220301-795e9634.pth', ),
        source='open-mmlab/mmpretrain: models/backbones/convnext.py; MMEngine checkpoint {meta, state_dict, ...}'),
)
# fmt: on

register(CONVNEXT_FAMILY, *CONVNEXT_FORMATS)


# --- DINOv3 ConvNeXt (helper H8, issue 20) ---------------------------------
#: facebookresearch/dinov3 ``dinov3/models/convnext.py``: the ConvNeXt v1
#: block names, no classifier (``head`` is an ``nn.Identity``), and the
#: final ``norm`` (``nn.LayerNorm``, eps 1e-6) stored twice: ``norms`` is
#: ``[Identity] * 3 + [self.norm]``, so ``norms.3.*`` is the same module as
#: ``norm.*`` (an alias: both become ``norm3``; different values are
#: refused). The released ``dinov3_convnext_<size>_pretrain_lvd1689m-*.pth``
#: are these flat state dicts; the eval ``teacher_checkpoint.pth`` and the
#: training checkpoint directories (:mod:`mmconv.dcp`) prefix them with
#: ``backbone.``.
_D3 = r'^(?:backbone\.)?'
# fmt: off
DINOV3_CONVNEXT_RULES: Tuple[Rule, ...] = (
    (_D3 + r'downsample_layers\.0\.([01])\.',       r'downsample_layers.0.\1.', 'stem: 4x4 patch conv (0), LayerNorm (1)'),
    (_D3 + r'downsample_layers\.([1-9])\.([01])\.', r'downsample_layers.\1.\2.', 'downsample layer: LayerNorm (0), 2x2 conv (1)'),
    (_D3 + r'stages\.(\d+)\.(\d+)\.dwconv\.',       _BLOCK + 'depthwise_conv.', 'block 7x7 depthwise conv (dwconv)'),
    (_D3 + r'stages\.(\d+)\.(\d+)\.norm\.',         _BLOCK + 'norm.',           'block LayerNorm'),
    (_D3 + r'stages\.(\d+)\.(\d+)\.pwconv([12])\.', _BLOCK + r'pointwise_conv\3.', 'block pointwise linear (pwconv1/2)'),
    (_D3 + r'stages\.(\d+)\.(\d+)\.gamma$',         _BLOCK + 'gamma',           'layer scale (gamma)'),
    (_D3 + r'norm\.',                               'norm3.',                    'final norm -> norm3, applied to the C5 map'),
    (_D3 + r'norms\.3\.',                           'norm3.',                    'final norm again (dinov3 ConvNeXt.norms[3] is self.norm)'),
)

_HF = r'^(?:model\.)?stages\.(\d+)\.'
#: transformers ``DINOv3ConvNextModel`` / ``DINOv3ConvNextBackbone``
#: (``models/dinov3_convnext/modeling_dinov3_convnext.py``): stage ``N``
#: holds its own ``downsample_layers`` (stage 0: conv, LayerNorm; others:
#: LayerNorm, conv) and ``layers.M``; ``save_pretrained`` writes
#: ``stages.*`` (transformers 4.56+ and 5.x: its conversion mapping adds
#: ``model.`` in memory only); the final norm is ``layer_norm`` (the
#: Backbone class has none).
HF_DINOV3_CONVNEXT_RULES: Tuple[Rule, ...] = (
    (_HF + r'downsample_layers\.([01])\.',               r'downsample_layers.\1.\2.', 'stem / downsample layer (conv, LayerNorm)'),
    (_HF + r'layers\.(\d+)\.depthwise_conv\.',          _BLOCK + 'depthwise_conv.', 'block 7x7 depthwise conv'),
    (_HF + r'layers\.(\d+)\.layer_norm\.',              _BLOCK + 'norm.',           'block LayerNorm (layer_norm)'),
    (_HF + r'layers\.(\d+)\.pointwise_conv([12])\.',    _BLOCK + r'pointwise_conv\3.', 'block pointwise linear'),
    (_HF + r'layers\.(\d+)\.gamma$',                    _BLOCK + 'gamma',           'layer scale (gamma)'),
    (r'^layer_norm\.',                                  'norm3.',                    'final norm (layer_norm) -> norm3, applied to the C5 map'),
)

DINOV3_CONVNEXT_FORMATS: Tuple[SourceFormat, ...] = (
    SourceFormat(
        'dinov3_convnext', 'convnext', 'DINOv3 ConvNeXt (official, facebookresearch/dinov3)',
        rules=DINOV3_CONVNEXT_RULES,
        sentinels=(_D3 + r'stages\.0\.0\.dwconv\.weight$',
                   _D3 + r'downsample_layers\.0\.0\.weight$',
                   _D3 + r'norms\.3\.weight$'),
        containers=('teacher', ),
        released=('dinov3_convnext_tiny_pretrain_lvd1689m-21b726bb.pth',
                  'dinov3_convnext_small_pretrain_lvd1689m-296db49d.pth',
                  'dinov3_convnext_base_pretrain_lvd1689m-801f2ba9.pth',
                  'dinov3_convnext_large_pretrain_lvd1689m-61fa432d.pth',
                  'teacher_checkpoint.pth', 'ckpt/<iteration>/ (DCP)'),
        source='facebookresearch/dinov3: dinov3/models/convnext.py, dinov3/hub/backbones.py (flat state dict, strict load); dinov3/train/train.py do_test ({teacher: model_ema.state_dict()}), checkpointer.save_checkpoint (DCP)'),
    SourceFormat(
        'hf_dinov3_convnext', 'convnext', 'Hugging Face transformers DINOv3 ConvNeXt (DINOv3ConvNextModel)',
        rules=HF_DINOV3_CONVNEXT_RULES,
        sentinels=(_HF + r'layers\.0\.depthwise_conv\.weight$',
                   r'^(?:model\.)?stages\.0\.downsample_layers\.0\.weight$'),
        released=('facebook/dinov3-convnext-tiny-pretrain-lvd1689m (model.safetensors)', ),
        source='huggingface/transformers: models/dinov3_convnext/modeling_dinov3_convnext.py, conversion_mapping.py'),
)
# fmt: on

register(*DINOV3_CONVNEXT_FORMATS)


# --- Hugging Face transformers (ConvNextModel, ConvNextV2Model, ...) ---------
# transformers' save_pretrained layout (convert_convnext_to_pytorch.py and
# convert_convnextv2_to_pytorch.py map the official names to these; 4.x and
# 5.x write the same): ``embeddings`` = stem, ``encoder.stages.N.
# downsampling_layer`` (N >= 1), blocks under ``encoder.stages.N.layers.M``
# with ``layer_scale_parameter`` (v1) or GRN ``weight`` / ``bias``
# ``[1, 1, 1, C]`` (v2), the final ``layernorm``; ``*ForImageClassification``
# adds the ``convnext.`` / ``convnextv2.`` prefix and ``classifier``.
_TF_PRE = r'^(?:convnext(?:v2)?\.)?'
_TF_B = _TF_PRE + r'encoder\.stages\.(\d+)\.layers\.(\d+)\.'

# fmt: off
HF_CONVNEXT_RULES: Tuple[Rule, ...] = (
    (_TF_PRE + r'embeddings\.patch_embeddings\.',                    'downsample_layers.0.0.',   'stem: patch conv (embeddings.patch_embeddings)'),
    (_TF_PRE + r'embeddings\.layernorm\.',                           'downsample_layers.0.1.',   'stem: LayerNorm (embeddings.layernorm)'),
    (_TF_PRE + r'encoder\.stages\.([1-9])\.downsampling_layer\.([01])\.', r'downsample_layers.\1.\2.', 'downsample layer: LayerNorm (0), 2x2 conv (1)'),
    (_TF_B + r'dwconv\.',                  _BLOCK + 'depthwise_conv.',     'block depthwise conv (dwconv)'),
    (_TF_B + r'layernorm\.',               _BLOCK + 'norm.',               'block LayerNorm (layernorm)'),
    (_TF_B + r'pwconv([12])\.',            _BLOCK + r'pointwise_conv\3.',  'block pointwise linear (pwconv1/2)'),
    (_TF_B + r'layer_scale_parameter$',    _BLOCK + 'gamma',               'layer scale (layer_scale_parameter = gamma)'),
    Rule(_TF_B + r'grn\.weight$',          _BLOCK + 'grn.gamma',           'GRN weight = gamma ([1, 1, 1, C] -> [C], grn_to_vector)', ops=GRN),
    Rule(_TF_B + r'grn\.bias$',            _BLOCK + 'grn.beta',            'GRN bias = beta ([1, 1, 1, C] -> [C], grn_to_vector)', ops=GRN),
    (_TF_PRE + r'layernorm\.',                                        'norm3.',                   'final layernorm -> norm3 (as the official final norm), applied to the C5 map'),
    (r'^classifier\.',                                                None,                       'ImageNet classifier (classifier)'),
)
# fmt: on



def hf_convnext_config(conv: 'Conversion', request: 'Request') -> None:
    """Format step (transformers folders): the ``config.json`` beside the
    weights must describe them (``hidden_sizes``, ``depths``); a lone
    weight file has no config: nothing to do."""
    cfg = conv.entries.get('config') if conv.entries else None
    if not isinstance(cfg, dict):
        return
    sd = conv.state_dict
    blocks: Dict[int, set] = {}
    for key in sd:
        m = re.match(r'stages\.(\d+)\.(\d+)\.', key)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    has = {'depths': [len(blocks[i]) for i in sorted(blocks)],
           'hidden_sizes': [int(sd[f'stages.{i}.0.depthwise_conv.weight']
                                .shape[0]) for i in sorted(blocks)
                            if f'stages.{i}.0.depthwise_conv.weight' in sd]}
    check_config((name, list(cfg[name]), has[name]) for name in has
                 if isinstance(cfg.get(name), list))


_TF_STEM = _TF_PRE + r'embeddings\.patch_embeddings\.weight$'
_TF_DW = _TF_PRE + r'encoder\.stages\.0\.layers\.0\.dwconv\.weight$'

# fmt: off
HF_CONVNEXT_FORMATS: Tuple[SourceFormat, ...] = (
    SourceFormat(
        'hf_convnext', 'convnext', 'Hugging Face transformers ConvNeXt (ConvNextModel, ConvNextForImageClassification)',
        rules=HF_CONVNEXT_RULES,
        sentinels=(_TF_DW, _TF_STEM),
        containers=('state_dict', ),
        surgery=(hf_convnext_config, ),
        released=('facebook/convnext-tiny-224 (model.safetensors / pytorch_model.bin + config.json)', ),
        source='huggingface/transformers: models/convnext/modeling_convnext.py, convert_convnext_to_pytorch.py'),
    SourceFormat(
        'hf_convnextv2', 'convnext', 'Hugging Face transformers ConvNeXt V2 (ConvNextV2Model, ConvNextV2ForImageClassification)',
        rules=HF_CONVNEXT_RULES,
        sentinels=(_TF_DW, _TF_STEM, _TF_PRE + r'encoder\.stages\.0\.layers\.0\.grn\.weight$'),
        containers=('state_dict', ),
        surgery=(hf_convnext_config, ),
        released=('facebook/convnextv2-tiny-1k-224 (model.safetensors + config.json)', ),
        source='huggingface/transformers: models/convnextv2/modeling_convnextv2.py (ConvNextV2GRN [1, 1, 1, C]), convert_convnextv2_to_pytorch.py'),
)
# fmt: on

register(*HF_CONVNEXT_FORMATS)
