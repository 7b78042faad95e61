# Copyright (c) mmconv contributors. All rights reserved.
"""The ResNet family: canonical names, finishing steps, and the detectron2
and torchvision targets.

Every ResNet source (:mod:`.selfsup`, :mod:`.detectron2`, ``hf_resnet``
here) renames into the torchvision / MMDetection names (``conv1``, ``bn1``,
``layer1.0.conv1`` ..., ``fc``), the canonical ones. Family: :data:`RESNET`
(target module :data:`RESNET_MODULE`, rules per target :data:`TARGET_RULES`,
detectron2's names :data:`DETECTRON2_NAMES`). Users: README, "Converting".
"""
import re
from dataclasses import dataclass
from typing import (Any, Dict, Iterable, Mapping, NamedTuple, Optional, Set,
                    Tuple)

from ..errors import ConversionError, UsageError
from ..reverse import rename, reverse_rules
from ..spec import (Conversion, Family, Request, Rule, SourceFormat,
                    Target, TargetModule, check_config, register)

__all__ = [
    'BACKBONE', 'BARE_BACKBONE', 'D2_PREFIX', 'DETECTRON2_NAMES',
    'TO_DETECTRON2_RULES', 'TARGET_RULES', 'RESNET', 'DETECTRON2_TARGET',
    'TORCHVISION_TARGET', 'Preprocessing', 'TORCHVISION_PIXEL', 'MSRA_PIXEL',
    'StyleFact', 'TORCHVISION_NETWORK', 'refuse_keep_fc_for_mmdet',
    'check_backbone',
    'decide_style_and_input', 'to_numpy_tree', 'RESNET_BLOCKS',
    'resnet_depth', 'RESNET_MODULE'
]

#: The stem and the four stages of a torchvision/MMDetection ResNet.
BACKBONE = r'(?:conv1|bn1|layer[1-4])\.'

#: Backbone files that are already stripped (released backbones, MMDetection
#: backbone checkpoints, torchvision): the backbone and an ImageNet
#: classifier in canonical names (the family drops ``fc``).
BARE_BACKBONE: Tuple[Rule, ...] = (
    (rf'^({BACKBONE})', r'\1', 'backbone (already in ResNet layout)'),
    (r'^fc\.',          'fc.', 'ImageNet classifier'),
)

# --- detectron2 <-> canonical ------------------------------------------------
# detectron2 numbers the stages as Caffe2 did: torchvision layerN = resN+1.
_STAGES = ((1, 2), (2, 3), (3, 4), (4, 5))
#: Where detectron2-family files keep the ResNet: model zoo (FPN)
#: ``backbone.bottom_up.``, detrex/C4 ``backbone.``, bare backbone files
#: (read, never written).
D2_PREFIX = r'^(?:module\.)?(?:backbone\.)?(?:bottom_up\.)?'

# fmt: off
#: detectron2's ResNet names -> canonical, as detectron2 files are read
#: (the ``detectron2`` format's table); written the other way round by the
#: ``detectron2`` target (:data:`TO_DETECTRON2_RULES`).
DETECTRON2_NAMES: Tuple[Rule, ...] = (
    rename('stem.conv1.norm.', 'bn1.',   'stem norm', prefix=D2_PREFIX),
    rename('stem.conv1.',      'conv1.', 'stem conv', prefix=D2_PREFIX),
    rename('stem.fc.',         'fc.',    'ImageNet classifier', prefix=D2_PREFIX, also=('linear.', )),
) + tuple(rule for s, r in _STAGES for rule in (
    rename(f'res{r}.<block>.conv<n:[123]>.norm.', f'layer{s}.<block>.bn<n>.',          f'res{r} norm',          prefix=D2_PREFIX),
    rename(f'res{r}.<block>.conv<n:[123]>.',      f'layer{s}.<block>.conv<n>.',        f'res{r} conv',          prefix=D2_PREFIX),
    rename(f'res{r}.<block>.shortcut.norm.',      f'layer{s}.<block>.downsample.1.',   f'res{r} shortcut norm', prefix=D2_PREFIX),
    rename(f'res{r}.<block>.shortcut.',           f'layer{s}.<block>.downsample.0.',   f'res{r} shortcut conv', prefix=D2_PREFIX),
))
# fmt: on

#: canonical -> detectron2 (``--to detectron2``): :data:`DETECTRON2_NAMES`
#: reversed, the mapping of detectron2's
#: ``tools/convert-torchvision-to-d2.py`` (``fc`` -> ``stem.fc``, as it
#: names it; detectron2 does not load it).
TO_DETECTRON2_RULES: Tuple[Rule, ...] = reverse_rules(DETECTRON2_NAMES)

#: The classifier in canonical names.
_FC = re.compile(r'^fc\.')
#: ``__author__`` values of torchvision-derived detectron2 files
#: (detectron2's and MoCo's converters); lower case.
_TORCHVISION_AUTHORS = ('torchvision', 'moco')


# --- format facts ------------------------------------------------------------
# What a ResNet format's ``SourceFormat.facts`` may say (read by
# :func:`decide_style_and_input` and the detectron2 target, never the
# format's name): ``style`` (:class:`StyleFact`), ``pixel`` (the
# :class:`Preprocessing` the layout implies whatever the style),
# ``pixel_in_file`` (its state dict may store ``pixel_mean``/``pixel_std``),
# ``d2_author`` (the ``__author__`` of its detectron2 output).
class StyleFact(NamedTuple):
    """The style a layout implies (``facts['style']``).

    Attributes:
        style (str): ``'caffe'`` (stride in the first 1x1 conv: detectron2
            ``STRIDE_IN_1X1: True``, the MSRA models) or ``'pytorch'``
            (stride in the 3x3 conv: torchvision).
        reason (str): For the report (``{format}``: the format's name).
        assumed (bool): A default, not implied: a torchvision ``__author__``
            recorded in the file overrides it; reported as ASSUMED.
    """

    style: str
    reason: str
    assumed: bool = False


#: ``facts`` of the formats whose networks are torchvision ResNets.
TORCHVISION_NETWORK: Mapping[str, Any] = {'style': StyleFact(
    'pytorch', '{format}: a torchvision ResNet (stride in the 3x3 conv)')}


@dataclass(frozen=True)
class Preprocessing:
    """Input normalisation the weights expect (0-255 pixel values).

    Attributes:
        mean (tuple[float]): Per channel, in ``channels`` order.
        std (tuple[float]): Per channel.
        channels (str): ``'RGB'`` or ``'BGR'``.
        reason (str): How it was decided.
    """

    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    channels: str
    reason: str = ''


#: torchvision ImageNet normalisation (RGB).
TORCHVISION_PIXEL = Preprocessing((123.675, 116.28, 103.53),
                                  (58.395, 57.12, 57.375), 'RGB',
                                  'torchvision ImageNet normalisation')
#: MSRA Caffe2 models (BGR, std absorbed into conv1).
MSRA_PIXEL = Preprocessing((103.53, 116.28, 123.675), (1.0, 1.0, 1.0), 'BGR',
                           'MSRA Caffe2 normalisation (detectron2 default)')


def _fmt(values) -> str:
    """``[123.675, 116.280, 103.530]``."""
    return '[' + ', '.join(f'{float(v):.3f}' for v in values) + ']'


# --- what the weights imply --------------------------------------------------
#: depth -> (block type, blocks per stage), as in ``mmdet.models.ResNet``.
RESNET_BLOCKS: Dict[int, Tuple[str, Tuple[int, int, int, int]]] = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
}


def resnet_depth(keys: Iterable[str]) -> Optional[int]:
    """The ResNet depth whose blocks per stage (and block type: a
    ``conv3`` makes a bottleneck) ``keys`` in canonical names hold, or
    None."""
    blocks: Dict[int, Set[int]] = {}
    bottleneck = False
    for k in keys:
        m = re.match(r'layer([1-4])\.(\d+)\.(\w+)', k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
            bottleneck |= m.group(3) == 'conv3'
    counts = tuple(len(blocks.get(s, ())) for s in (1, 2, 3, 4))
    kind = 'bottleneck' if bottleneck else 'basic'
    return next((d for d, arch in RESNET_BLOCKS.items()
                 if arch == (kind, counts)), None)


def _resnet_kwargs(state_dict: Mapping[str, Any]
                   ) -> Optional[Dict[str, Any]]:
    depth = resnet_depth(state_dict)
    return None if depth is None else {'depth': depth}


#: The module a ResNet backbone is loaded into: MMDetection's ``ResNet`` of
#: the depth the blocks imply (the ImageNet classifier aside), built by
#: :mod:`mmconv.verify`; differences (missing, unexpected, mis-shaped
#: tensors: ``report.backbone``) are reported (``backbone:`` line, a
#: warning), not refused.
RESNET_MODULE = TargetModule(
    'mmdet.models.backbones.resnet:ResNet', _resnet_kwargs,
    lambda args: f'ResNet-{args["depth"]} backbone', strict=False,
    exclude=r'^fc\.',
    unknown='not a ResNet backbone (depth could not be inferred)')


# --- the classifier, per target ---------------------------------------------
#: What the canonical names become for each target: ``fc`` is not part of a
#: backbone (dropped; kept for detectron2/torchvision with ``--keep-fc``),
#: the rest keeps its name (then the target's own table, if any).
_KEEP = Rule(r'^', '', 'canonical name (the target keeps it)')
_FC_NOT_IN_MMDET = Rule(
    r'^fc\.', None, 'ImageNet classifier (not in the backbone; MMDetection '
    'backbones have none)')
_FC_UNLESS_KEPT = Rule(
    r'^fc\.', None, 'ImageNet classifier (not in the backbone; --keep-fc '
    'keeps it)', unless='keep_fc')
TARGET_RULES: Tuple[Tuple[str, Tuple[Rule, ...]], ...] = (
    ('mmdet', (_FC_NOT_IN_MMDET, _KEEP)),
    ('detectron2', (_FC_UNLESS_KEPT, )),  # then TO_DETECTRON2_RULES
    ('torchvision', (_FC_UNLESS_KEPT, _KEEP)),
)


# --- finishing steps (every ResNet conversion) -------------------------------
def refuse_keep_fc_for_mmdet(conv: 'Conversion', request: 'Request') -> None:
    """``--keep-fc`` applies to detectron2/torchvision output only."""
    if request.keep_fc and conv.target.name == 'mmdet':
        raise UsageError('--keep-fc applies to detectron2/torchvision output '
                         '(MMDetection backbones have no classifier): drop '
                         'it')


def check_backbone(conv: 'Conversion', request: 'Request') -> None:
    """Refuse a result with no backbone tensor (the classifier alone is
    empty unless ``--keep-fc`` keeps it); the comparison with the module
    is ``report.backbone`` (:data:`RESNET_MODULE`)."""
    backbone = [k for k in conv.state_dict if not _FC.match(k)]
    if not backbone and not (request.keep_fc and conv.state_dict):
        raise ConversionError('no ResNet backbone tensor in the checkpoint '
                              f'(format {conv.format.name})')


def _style(style: str, fmt: SourceFormat, bottleneck: bool,
           author: Optional[str], recorded: Optional[Mapping]
           ) -> Tuple[str, str, bool]:
    """``(style, reason, assumed)`` for the source."""
    if not bottleneck:
        return ('pytorch', 'BasicBlock ResNet: the stride is in the first '
                '3x3 conv whatever the style', False)
    if style != 'auto':
        return style, 'given', False
    if recorded is not None and 'stride_in_1x1' in recorded:
        s11 = bool(recorded['stride_in_1x1'])
        return ('caffe' if s11 else 'pytorch',
                f'stride_in_1x1={s11} recorded by mmconv in the file', False)
    fact: Optional[StyleFact] = fmt.facts.get('style')
    if fact is not None and not fact.assumed:
        return fact.style, fact.reason.format(format=fmt.name), False
    if author and author.lower() in _TORCHVISION_AUTHORS:
        return ('pytorch', f'__author__ {author!r}: a torchvision ResNet '
                '(stride in the 3x3 conv, STRIDE_IN_1X1: False)', False)
    if fact is not None:
        return fact.style, fact.reason.format(format=fmt.name), True
    return ('pytorch', "MMDetection's default style; use --style caffe if "
            "it was trained with style='caffe'", True)


def _recorded(entries: Mapping) -> Optional[Mapping]:
    """Style/normalisation mmconv wrote into an earlier output: the
    ``mmconv`` entry of its detectron2 files, ``meta`` of its MMDetection
    files."""
    for key in ('mmconv', 'meta'):
        entry = entries.get(key)
        if isinstance(entry, Mapping) and 'stride_in_1x1' in entry:
            return entry
    return None


def _pixel(style: str, facts: Mapping[str, Any], sd: Mapping[str, Any],
           recorded: Optional[Mapping]) -> Preprocessing:
    """The input normalisation the source weights expect."""
    import torch
    if recorded is not None and 'pixel_mean' in recorded:
        return Preprocessing(tuple(recorded['pixel_mean']),
                             tuple(recorded['pixel_std']),
                             recorded.get('input_format', 'RGB'),
                             'recorded by mmconv in the file')
    mean = next((v for k, v in sd.items() if k.endswith('pixel_mean')), None)
    std = next((v for k, v in sd.items() if k.endswith('pixel_std')), None)
    if isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor) \
            and mean.numel() == 3 and std.numel() == 3:
        m = tuple(round(float(x), 3) for x in mean.flatten())
        s = tuple(round(float(x), 3) for x in std.flatten())
        bgr = abs(m[0] - MSRA_PIXEL.mean[0]) < abs(m[0] - 123.675)
        return Preprocessing(m, s, 'BGR' if bgr else 'RGB',
                             'pixel_mean/pixel_std stored in the checkpoint '
                             '(channel order inferred from the mean)')
    if 'pixel' in facts:  # the source's own preprocessing, any style
        return facts['pixel']
    return MSRA_PIXEL if style == 'caffe' else TORCHVISION_PIXEL


def decide_style_and_input(conv: 'Conversion', request: 'Request') -> None:
    """Decide what the weights cannot say, style and input normalisation;
    add them to the summary, the meta and the config hints (the changes to
    make) of the target."""
    fmt = conv.format
    check = conv.report.backbone
    depth = check.args.get('depth')
    entries = conv.entries
    author = entries.get('__author__') if isinstance(
        entries.get('__author__'), str) else None
    recorded = _recorded(entries)
    bottleneck = depth is not None and depth >= 50
    style, why, assumed = _style(request.style, fmt, bottleneck, author,
                                 recorded)
    pixel = _pixel(style, fmt.facts,
                   conv.source if fmt.facts.get('pixel_in_file') else {},
                   recorded)
    target = conv.target.name
    conv.lines += [
        f'target:   {target}',
        f'style:    {style}' + (' (ASSUMED)' if assumed else '') +
        f' — {why}',
        f'input:    {pixel.channels} mean {_fmt(pixel.mean)} std '
        f'{_fmt(pixel.std)} — {pixel.reason}']
    filled = conv.meta.get('frozen_bn_filled', 0)
    if filled:
        conv.lines.append(
            f'FrozenBN: {filled} norm layers had scale/bias only; '
            'running_mean=0, running_var=1-1e-5 added: the buffers '
            "detectron2's FrozenBatchNorm2d keeps for them, so BN(eps=1e-5) "
            'computes what detectron2 computes')
    warnings = []
    if not check.complete:
        warnings.append(check.describe())
    if assumed:
        warnings.append(f'style {style!r} is assumed, not read from the '
                        'file: check the training config')
    if target == 'torchvision' and style == 'caffe' and bottleneck:
        warnings.append("torchvision's Bottleneck strides in the 3x3 conv; "
                        'this caffe-style (stride-in-1x1) backbone computes '
                        'different features there')
    conv.lines += [f'warning:  {w}' for w in warnings]
    conv.meta.update({
        'target': target, 'depth': depth, 'style': style,
        'stride_in_1x1': style == 'caffe' and bottleneck,
        'pixel_mean': list(pixel.mean), 'pixel_std': list(pixel.std),
        'input_format': pixel.channels, 'frozen_bn_filled': filled})
    has_fc = request.keep_fc and any(_FC.match(k) for k in conv.state_dict)
    conv.hints = lambda dst: _HINTS[target](dst, depth, style,
                                            bottleneck, pixel, has_fc)


# --- config hints per target -------------------------------------------------
def _d2_hints(dst: str, depth: Optional[int], style: str, bottleneck: bool,
              pixel: Preprocessing, has_fc: bool) -> str:
    d = depth or '<depth>'
    s11 = style == 'caffe'
    mean, std = _fmt(pixel.mean), _fmt(pixel.std)
    basic = not bottleneck
    lines = [
        'detectron2 config (yaml):',
        '  MODEL:', f'    WEIGHTS: "{dst}"',
        f'    PIXEL_MEAN: {mean}', f'    PIXEL_STD: {std}',
        '    RESNETS:', f'      DEPTH: {d}']
    lines += (['      RES2_OUT_CHANNELS: 64   # required for R18/R34']
              if basic else [f'      STRIDE_IN_1X1: {s11}'])
    lines += ['  INPUT:', f'    FORMAT: "{pixel.channels}"',
              'detectron2 LazyConfig / detrex:',
              f'  train.init_checkpoint = "{dst}"',
              f'  model.pixel_mean = {mean}',
              f'  model.pixel_std = {std}',
              f'  model.input_format = "{pixel.channels}"',
              '  dataloader.train.mapper.image_format = '
              f'"{pixel.channels}"   # and dataloader.test',
              '  # FPN models (detectron2 model zoo):',
              f'  model.backbone.bottom_up.stages.depth = {d}']
    if not basic:
        lines.append(f'  model.backbone.bottom_up.stages.stride_in_1x1 = {s11}')
    lines += ['  # detrex and C4 models:',
              f'  model.backbone.stages.depth = {d}']
    if not basic:
        lines.append(f'  model.backbone.stages.stride_in_1x1 = {s11}')
    else:
        lines.append('  # R18/R34: remove stride_in_1x1 from stages '
                     '(BasicBlock does not take it)')
    return '\n'.join(lines)


def _mmdet_hints(dst: str, depth: Optional[int], style: str,
                 bottleneck: bool, pixel: Preprocessing,
                 has_fc: bool) -> str:
    rgb = pixel.channels == 'RGB'
    style = style if bottleneck else 'pytorch'
    lines = [
        'MMDetection config:',
        '  model = dict(',
        '      data_preprocessor=dict(',
        f'          mean={_fmt(pixel.mean)},',
        f'          std={_fmt(pixel.std)},',
        f'          bgr_to_rgb={rgb}),',
        '      backbone=dict(',
        f'          depth={depth or "<depth>"},',
        f"          style='{style}',"]
    if style == 'caffe':
        lines += ['          norm_cfg=dict(type=\'BN\', '
                  'requires_grad=False),',
                  '          norm_eval=True,']
    lines += [f"          init_cfg=dict(type='Pretrained', "
              f"checkpoint='{dst}')))"]
    return '\n'.join(lines)


def _tv_hints(dst: str, depth: Optional[int], style: str, bottleneck: bool,
              pixel: Preprocessing, has_fc: bool) -> str:
    return '\n'.join([
        'torchvision:',
        f'  model = torchvision.models.resnet{depth or "<depth>"}()',
        f"  model.load_state_dict(torch.load('{dst}'), strict="
        f'{has_fc})' + ('' if has_fc else '   # no fc in the file'),
        '  input: RGB in [0, 1], Normalize(mean=[0.485, 0.456, 0.406], '
        'std=[0.229, 0.224, 0.225])'])


_HINTS = {'detectron2': _d2_hints, 'mmdet': _mmdet_hints,
          'torchvision': _tv_hints}


# --- target output builders --------------------------------------------------
def to_numpy_tree(obj: Any) -> Any:
    """Tensors inside nested dicts -> numpy arrays (no copy on CPU)."""
    import torch
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy()
    if isinstance(obj, dict):
        return {k: to_numpy_tree(v) for k, v in obj.items()}
    return obj


def _build_detectron2(conv: 'Conversion', meta: Dict[str, Any]) -> Any:
    """``{'model': {name: ndarray}, '__author__', 'matching_heuristics',
    'mmconv': meta}`` (``__author__`` is ``'torchvision'`` for torchvision
    sources, as detectron2's converter writes)."""
    author = conv.format.facts.get('d2_author',
                                   f'mmconv:{conv.format.name}')
    return {'model': to_numpy_tree(conv.state_dict), '__author__': author,
            'matching_heuristics': True, 'mmconv': meta}


def _build_torchvision(conv: 'Conversion', meta: Dict[str, Any]) -> Any:
    """The bare state dict, as torchvision's own files."""
    return dict(conv.state_dict)


RESNET = Family(
    'resnet', 'ResNet backbone',
    options=('select', 'prefix', 'style', 'keep_fc'),
    finish=(refuse_keep_fc_for_mmdet, check_backbone,
            decide_style_and_input),
    targets=('mmdet', 'detectron2', 'torchvision'),
    target_rules=TARGET_RULES, module=RESNET_MODULE)
DETECTRON2_TARGET = Target(
    'detectron2', 'detectron2', rules=TO_DETECTRON2_RULES,
    build=_build_detectron2, file_format='pkl', suffix='.pkl')
TORCHVISION_TARGET = Target('torchvision', 'torchvision',
                            build=_build_torchvision)

register(RESNET, DETECTRON2_TARGET, TORCHVISION_TARGET)


# --- Hugging Face transformers (ResNetModel, ResNetForImageClassification) --
# transformers' save_pretrained layout (convert_resnet_to_pytorch.py maps
# timm's ResNets to these; 4.x and 5.x write the same): the stem is
# ``embedder.embedder.{convolution, normalization}``, stage ``N`` (0-3) is
# torchvision's ``layer{N+1}``, a block's ``layer.K.{convolution,
# normalization}`` its ``conv{K+1}`` / ``bn{K+1}``, ``shortcut`` its
# ``downsample``; ``ResNetForImageClassification`` adds the ``resnet.``
# prefix and ``classifier.1`` (= ``fc``).
_TF_RESNET = r'^(?:resnet\.)?'
_TF_STAGE = _TF_RESNET + r'encoder\.stages\.{s}\.layers\.(\d+)\.'

# fmt: off
HF_RESNET_RULES: Tuple[Rule, ...] = (
    (_TF_RESNET + r'embedder\.embedder\.convolution\.',   'conv1.', 'stem conv (embedder.convolution)'),
    (_TF_RESNET + r'embedder\.embedder\.normalization\.', 'bn1.',   'stem norm (embedder.normalization)'),
) + tuple(rule for s in range(4) for rule in (
    (_TF_STAGE.format(s=s) + r'shortcut\.convolution\.',   f'layer{s + 1}.\\1.downsample.0.', f'stage {s} shortcut conv = layer{s + 1} downsample.0'),
    (_TF_STAGE.format(s=s) + r'shortcut\.normalization\.', f'layer{s + 1}.\\1.downsample.1.', f'stage {s} shortcut norm = layer{s + 1} downsample.1'),
) + tuple(rule for k in range(3) for rule in (
    (_TF_STAGE.format(s=s) + rf'layer\.{k}\.convolution\.',   f'layer{s + 1}.\\1.conv{k + 1}.', f'stage {s} block conv layer.{k} = layer{s + 1} conv{k + 1}'),
    (_TF_STAGE.format(s=s) + rf'layer\.{k}\.normalization\.', f'layer{s + 1}.\\1.bn{k + 1}.',   f'stage {s} block norm layer.{k} = layer{s + 1} bn{k + 1}'),
))) + (
    (r'^classifier\.1\.', 'fc.', 'ImageNet classifier (classifier.1 = fc)'),
)
# fmt: on


def hf_resnet_config(conv: 'Conversion', request: 'Request') -> None:
    """Format step (transformers folders): what ``config.json`` says that
    the weights cannot. ``downsample_in_first_stage`` strides layer1 (no
    MMDetection/torchvision equivalent): refused; ``downsample_in_bottleneck``
    strides in the first 1x1 conv (``style='caffe'``): refused unless
    ``--style`` says so. A lone weight file has no config: transformers'
    default (stride in the 3x3 conv, as torchvision) is assumed."""
    cfg = conv.entries.get('config') if conv.entries else None
    if not isinstance(cfg, dict):
        return
    if cfg.get('downsample_in_first_stage'):
        raise ConversionError(
            'config.json: downsample_in_first_stage=true (the first stage '
            "strides): MMDetection's and torchvision's ResNet do not; no "
            'equivalent backbone')
    if cfg.get('downsample_in_bottleneck') and request.style == 'auto':
        raise ConversionError(
            'config.json: downsample_in_bottleneck=true (stride in the '
            "first 1x1 conv, style='caffe'): convert with --style caffe")
    if isinstance(cfg.get('hidden_act'), str) and cfg['hidden_act'] != 'relu':
        raise ConversionError(
            f"config.json: hidden_act={cfg['hidden_act']!r}: MMDetection's "
            'ResNet uses relu; no equivalent backbone')
    sd = conv.state_dict
    blocks = [sorted({int(m.group(1)) for m in (
        re.match(rf'layer{s}\.(\d+)\.', k) for k in sd) if m})
        for s in range(1, 5)]
    widths = []
    for s, found in enumerate(blocks, 1):
        last = [sd[f'layer{s}.0.conv{k}.weight'] for k in (3, 2)
                if f'layer{s}.0.conv{k}.weight' in sd]
        if last:
            widths.append(int(last[0].shape[0]))
    has = {'depths': [len(b) for b in blocks], 'hidden_sizes': widths}
    check_config((name, list(cfg[name]), has[name]) for name in has
                 if isinstance(cfg.get(name), list))


#: transformers' ResNet image processor (microsoft/resnet-50
#: preprocessor_config.json: ImageNet mean / std, RGB), whatever the style.
HF_RESNET_PIXEL = Preprocessing(
    TORCHVISION_PIXEL.mean, TORCHVISION_PIXEL.std, 'RGB',
    'transformers ResNet image processor (ImageNet mean/std, RGB)')

# fmt: off
HF_RESNET_FORMATS: Tuple[SourceFormat, ...] = (
    SourceFormat(
        'hf_resnet', 'resnet', 'Hugging Face transformers ResNet (ResNetModel, ResNetForImageClassification)',
        rules=HF_RESNET_RULES,
        sentinels=(_TF_RESNET + r'embedder\.embedder\.convolution\.weight$',
                   _TF_RESNET + r'encoder\.stages\.0\.layers\.0\.layer\.0\.convolution\.weight$'),
        containers=('state_dict', ),
        surgery=(hf_resnet_config, ),
        facts={'style': StyleFact('pytorch', '{format}: transformers ResNet, downsample_in_bottleneck=false (its default; config.json, when present, is checked): stride in the 3x3 conv, as torchvision'),
               'pixel': HF_RESNET_PIXEL},
        released=('microsoft/resnet-50 (model.safetensors / pytorch_model.bin + config.json)', 'microsoft/resnet-18'),
        source='huggingface/transformers: models/resnet/modeling_resnet.py, convert_resnet_to_pytorch.py (timm ResNets, stride in the 3x3 conv)'),
)
# fmt: on

register(*HF_RESNET_FORMATS)
