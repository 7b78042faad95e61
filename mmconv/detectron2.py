# Copyright (c) mmconv contributors. All rights reserved.
"""ResNet backbones between torchvision, detectron2/detrex and MMDetection.

Every conversion goes through the torchvision/MMDetection ResNet naming
(``conv1``, ``bn1``, ``layer1.0.conv1`` ...), the *canonical* names:

* source -> canonical: the rule tables below for detectron2 (model-zoo
  ``backbone.bottom_up.res2...``, detrex ``backbone.res2...``, bare
  ``res2...``) and Caffe2 blobs (MSRA ``R-50.pkl``/``R-101.pkl``:
  ``conv1_w``, ``res_conv1_bn_s``, ``res2_0_branch2a_w``...), or any format of
  :mod:`mmconv.formats` (self-supervised, torchvision, MMDetection);
* canonical -> target: unchanged for MMDetection/torchvision, or
  :data:`TO_DETECTRON2_RULES` (the mapping of detectron2's
  ``tools/convert-torchvision-to-d2.py``: ``stem.``, ``layerN`` ->
  ``res{N+1}``, ``bnK`` -> ``convK.norm``, ``downsample.0/1`` ->
  ``shortcut``/``shortcut.norm``).

Rules are ``(regex, replacement or None to drop, reason)`` tuples applied by
:func:`mmconv.convert.convert_state_dict` (first match wins); tensor surgery
(FrozenBN statistics of Caffe2 files) is in named functions.

What the weights cannot say is decided and reported: the ResNet *style*
(where a bottleneck strides: ``'caffe'`` = detectron2
``STRIDE_IN_1X1: True``, the MSRA models; ``'pytorch'`` = ``False``,
torchvision) and the input normalisation the weights expect; both are printed
as the config changes to make (:meth:`ResNetConversion.config_hints`).
"""
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch

from .containers import unwrap
from .convert import ConversionResult, _take_prefix, convert_state_dict
from .detect import detect_format
from .errors import ConversionError, OutputError
from .formats import BACKBONE, Format, Rule, get_format
from .arch import check_resnet
from .report import ConversionReport, KeyRecord
from .version import __version__

__all__ = [
    'DETECTRON2', 'CAFFE2', 'TO_DETECTRON2', 'D2_FORMATS', 'TARGETS',
    'STYLES', 'FROZEN_BN_EPS', 'TORCHVISION_PIXEL', 'MSRA_PIXEL',
    'ResNetConversion', 'Preprocessing', 'WrittenResNet', 'convert_resnet',
    'build_object', 'convert_file_to', 'detect_d2_format',
    'fill_frozen_bn_stats', 'to_numpy_tree'
]

#: Output layouts.
TARGETS = ('mmdet', 'detectron2', 'torchvision')
#: ``auto`` or an MMDetection ``ResNet(style=...)``.
STYLES = ('auto', 'caffe', 'pytorch')
#: eps of detectron2's ``FrozenBatchNorm2d`` and of MMDetection's BN.
FROZEN_BN_EPS = 1e-5

# --- canonical (torchvision / MMDetection) -> detectron2 --------------------
# detectron2 numbers the stages as Caffe2 did: torchvision layerN = resN+1.
_STAGES = ((1, 2), (2, 3), (3, 4), (4, 5))

# fmt: off
TO_DETECTRON2_RULES: Tuple[Rule, ...] = (
    (r'^conv1\.',  'stem.conv1.',      'stem conv'),
    (r'^bn1\.',    'stem.conv1.norm.', 'stem norm'),
    (r'^fc\.',     'stem.fc.',         'ImageNet classifier (named as convert-torchvision-to-d2.py names it; detectron2 does not load it)'),
) + tuple(rule for n, r in _STAGES for rule in (
    (rf'^layer{n}\.(\d+)\.conv([123])\.',      rf'res{r}.\1.conv\2.',       f'res{r} conv'),
    (rf'^layer{n}\.(\d+)\.bn([123])\.',        rf'res{r}.\1.conv\2.norm.',  f'res{r} norm'),
    (rf'^layer{n}\.(\d+)\.downsample\.0\.',    rf'res{r}.\1.shortcut.',      f'res{r} shortcut conv'),
    (rf'^layer{n}\.(\d+)\.downsample\.1\.',    rf'res{r}.\1.shortcut.norm.', f'res{r} shortcut norm'),
))

# --- detectron2 -> canonical ------------------------------------------------
#: Where detectron2-family files keep the ResNet: model zoo (FPN)
#: ``backbone.bottom_up.``, detrex/C4 ``backbone.``, bare backbone files.
_D2 = r'^(?:module\.)?(?:backbone\.)?(?:bottom_up\.)?'

DETECTRON2_RULES: Tuple[Rule, ...] = (
    (_D2 + r'stem\.conv1\.norm\.',         'bn1.',   'stem norm'),
    (_D2 + r'stem\.conv1\.',               'conv1.', 'stem conv'),
    (_D2 + r'(?:stem\.fc|linear)\.',       'fc.',    'ImageNet classifier'),
) + tuple(rule for n, r in _STAGES for rule in (
    (_D2 + rf'res{r}\.(\d+)\.conv([123])\.norm\.',  rf'layer{n}.\1.bn\2.',          f'res{r} norm'),
    (_D2 + rf'res{r}\.(\d+)\.conv([123])\.',        rf'layer{n}.\1.conv\2.',        f'res{r} conv'),
    (_D2 + rf'res{r}\.(\d+)\.shortcut\.norm\.',     rf'layer{n}.\1.downsample.1.',  f'res{r} shortcut norm'),
    (_D2 + rf'res{r}\.(\d+)\.shortcut\.',           rf'layer{n}.\1.downsample.0.',  f'res{r} shortcut conv'),
)) + (
    (r'^(?:module\.)?backbone\.(?:fpn_|top_block\.)', None, 'FPN (detector neck)'),
    (r'^(?:module\.)?roi_heads\.',                    None, 'ROI heads (C4 models: roi_heads.res5 is the head, MMDetection roi_head.shared_head)'),
    (r'^(?:module\.)?(?:proposal_generator|head|sem_seg_head|panoptic_head|criterion|transformer|class_embed|bbox_embed|query_embed|input_proj|label_enc)\.', None, 'detector head'),
    (r'^(?:module\.)?pixel_(?:mean|std)$',            None, 'input normalisation (printed as the config to use)'),
)

# --- Caffe2 blobs -> detectron2 names ----------------------------------------
# As detectron2/checkpoint/c2_model_loading.py reads them (MSRA ImageNet
# models: FrozenBN as scale ``_bn_s`` and bias ``_bn_b`` only).
_C2_BRANCHES = (('branch2a', 'conv1'), ('branch2b', 'conv2'),
                ('branch2c', 'conv3'), ('branch1', 'shortcut'))
_C2_SUFFIXES = (('w', 'weight'), ('bn_s', 'norm.weight'),
                ('bn_b', 'norm.bias'), ('bn_rm', 'norm.running_mean'),
                ('bn_riv', 'norm.running_var'))

CAFFE2_RULES: Tuple[Rule, ...] = (
    (r'_momentum$',        None,                           'SGD momentum (detectron2 drops *_momentum too)'),
    (r'^conv1_w$',         'stem.conv1.weight',            'stem conv'),
    (r'^conv1_b$',         None,                           'stem conv bias of some Caffe2 files (~1e-9; the ResNet conv has none, detectron2 does not load it)'),
    (r'^res_conv1_bn_s$',  'stem.conv1.norm.weight',       'stem FrozenBN scale'),
    (r'^res_conv1_bn_b$',  'stem.conv1.norm.bias',         'stem FrozenBN bias'),
    (r'^res_conv1_bn_rm$', 'stem.conv1.norm.running_mean', 'stem BN mean'),
    (r'^res_conv1_bn_riv$', 'stem.conv1.norm.running_var', 'stem BN variance'),
    (r'^(?:fc1000|pred)_w$', 'linear.weight',              'ImageNet classifier'),
    (r'^(?:fc1000|pred)_b$', 'linear.bias',                'ImageNet classifier'),
) + tuple(
    (rf'^res([2-5])_(\d+)_{branch}_{c2}$', rf'res\1.\2.{d2}.{name}', f'{branch} {c2}')
    for branch, d2 in _C2_BRANCHES for c2, name in _C2_SUFFIXES)
# fmt: on

DETECTRON2 = Format(
    'detectron2', 'detectron2 / detrex ResNet',
    rules=DETECTRON2_RULES,
    sentinels=(r'(?:^|\.)(?:stem\.conv1|res2\.0\.conv1)\.weight$', ),
    containers=('model', ),
    released=('model_final_f10217.pkl', 'R-50.pkl (torchvision, converted)'),
    source='facebookresearch/detectron2: {model, __author__[, '
    'matching_heuristics]} .pkl of numpy arrays; training .pth {model, ...}')
CAFFE2 = Format(
    'caffe2', 'Caffe2 / Detectron1 ResNet blobs (MSRA)',
    rules=CAFFE2_RULES,
    sentinels=(r'^(?:conv1_w|res2_0_branch2a_w)$', ),
    containers=('blobs', ),
    released=('R-50.pkl', 'R-101.pkl'),
    source='ImageNetPretrained/MSRA: bare dict of numpy blobs; Detectron1 '
    'detection models: {blobs, cfg}')
TO_DETECTRON2 = Format('to-detectron2', 'canonical -> detectron2',
                       rules=TO_DETECTRON2_RULES)
#: Source formats this module adds to those of :mod:`mmconv.formats`.
D2_FORMATS: Dict[str, Format] = {f.name: f for f in (DETECTRON2, CAFFE2)}

#: torchvision keeping its classifier (``--keep-fc``).
_TORCHVISION_FC = Format(
    'torchvision', 'torchvision ResNet',
    rules=((rf'^({BACKBONE}|fc\.)', r'\1', 'torchvision ResNet'), ),
    containers=())

#: The classifier in canonical names.
_FC = re.compile(r'^fc\.')
#: ``__author__`` values of torchvision-derived detectron2 files
#: (detectron2's and MoCo's converters); lower case.
_TORCHVISION_AUTHORS = ('torchvision', 'moco')
#: mmconv formats whose networks are torchvision ResNets (stride in 3x3).
_TORCHVISION_SOURCES = ('moco', 'mocov3', 'swav', 'densecl', 'simsiam',
                        'barlowtwins', 'vicreg', 'dino', 'vissl',
                        'torchvision')


@dataclass(frozen=True)
class Preprocessing:
    """Input normalisation the weights expect (0-255 pixel values).

    Attributes:
        mean (list[float]): Per channel, in ``channels`` order.
        std (list[float]): Per channel.
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


@dataclass
class ResNetConversion:
    """A converted ResNet and what its target needs to know.

    Attributes:
        state_dict (dict): Output tensors in the target's names.
        report (ConversionReport): Source key -> output key, drops, reasons.
        target (str): ``'mmdet'``, ``'detectron2'`` or ``'torchvision'``.
        depth (int | None): ResNet depth.
        style (str): ``'caffe'`` (stride in the 1x1 conv) or ``'pytorch'``.
        style_reason (str): Why that style.
        style_assumed (bool): Not determined from the file (check it).
        pixel (Preprocessing): Input normalisation the weights expect.
        filled (list[str]): Norm layers whose running statistics were not in
            the file and were set to FrozenBN's identity (mean 0, var 1-eps).
        warnings (list[str]): Things the user must look at.
        author (str | None): ``__author__`` of a detectron2 source.
    """

    state_dict: Dict[str, torch.Tensor]
    report: ConversionReport
    target: str
    depth: Optional[int]
    style: str
    style_reason: str
    style_assumed: bool = False
    pixel: Preprocessing = TORCHVISION_PIXEL
    filled: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    author: Optional[str] = None

    @property
    def bottleneck(self) -> bool:
        """Whether the blocks are bottlenecks (style matters)."""
        return self.depth is not None and self.depth >= 50

    def summary(self) -> str:
        """The report's summary plus target, style and statistics lines."""
        lines = [self.report.summary(), f'target:   {self.target}']
        lines.append(f'style:    {self.style}'
                     + (' (ASSUMED)' if self.style_assumed else '')
                     + f' — {self.style_reason}')
        lines.append(f'input:    {self.pixel.channels} mean '
                     f'{_fmt(self.pixel.mean)} std {_fmt(self.pixel.std)}'
                     f' — {self.pixel.reason}')
        if self.filled:
            lines.append(
                f'FrozenBN: {len(self.filled)} norm layers had scale/bias '
                'only; running_mean=0, running_var=1-1e-5 added: the '
                "buffers detectron2's FrozenBatchNorm2d keeps for them, so "
                'BN(eps=1e-5) computes what detectron2 computes')
        lines += [f'warning:  {w}' for w in self.warnings]
        return '\n'.join(lines)

    def meta(self) -> Dict[str, Any]:
        """Plain-typed provenance written into the output."""
        return {'target': self.target, 'depth': self.depth,
                'style': self.style,
                'stride_in_1x1': self.style == 'caffe' and self.bottleneck,
                'pixel_mean': list(self.pixel.mean),
                'pixel_std': list(self.pixel.std),
                'input_format': self.pixel.channels,
                'frozen_bn_filled': len(self.filled)}

    def config_hints(self, dst: str = 'DST') -> str:
        """The config changes needed to use the output, for its target."""
        return {'detectron2': self._d2_hints, 'mmdet': self._mmdet_hints,
                'torchvision': self._tv_hints}[self.target](dst)

    def _d2_hints(self, dst: str) -> str:
        d = self.depth or '<depth>'
        s11 = self.style == 'caffe'
        mean, std = _fmt(self.pixel.mean), _fmt(self.pixel.std)
        basic = not self.bottleneck
        lines = [
            'detectron2 config (yaml):',
            '  MODEL:', f'    WEIGHTS: "{dst}"',
            f'    PIXEL_MEAN: {mean}', f'    PIXEL_STD: {std}',
            '    RESNETS:', f'      DEPTH: {d}']
        lines += (['      RES2_OUT_CHANNELS: 64   # required for R18/R34']
                  if basic else [f'      STRIDE_IN_1X1: {s11}'])
        lines += ['  INPUT:', f'    FORMAT: "{self.pixel.channels}"',
                  'detectron2 LazyConfig / detrex:',
                  f'  train.init_checkpoint = "{dst}"',
                  f'  model.pixel_mean = {mean}',
                  f'  model.pixel_std = {std}',
                  f'  model.input_format = "{self.pixel.channels}"',
                  '  dataloader.train.mapper.image_format = '
                  f'"{self.pixel.channels}"   # and dataloader.test',
                  '  # FPN models (detectron2 model zoo):',
                  f'  model.backbone.bottom_up.stages.depth = {d}']
        if not basic:
            lines.append('  model.backbone.bottom_up.stages.stride_in_1x1 = '
                         f'{s11}')
        lines += ['  # detrex and C4 models:',
                  f'  model.backbone.stages.depth = {d}']
        if not basic:
            lines.append(f'  model.backbone.stages.stride_in_1x1 = {s11}')
        else:
            lines.append('  # R18/R34: remove stride_in_1x1 from stages '
                         '(BasicBlock does not take it)')
        return '\n'.join(lines)

    def _mmdet_hints(self, dst: str) -> str:
        rgb = self.pixel.channels == 'RGB'
        style = self.style if self.bottleneck else 'pytorch'
        lines = [
            'MMDetection config:',
            '  model = dict(',
            '      data_preprocessor=dict(',
            f'          mean={_fmt(self.pixel.mean)},',
            f'          std={_fmt(self.pixel.std)},',
            f'          bgr_to_rgb={rgb}),',
            '      backbone=dict(',
            f'          depth={self.depth or "<depth>"},',
            f"          style='{style}',"]
        if style == 'caffe':
            lines += ['          norm_cfg=dict(type=\'BN\', '
                      'requires_grad=False),',
                      '          norm_eval=True,']
        lines += [f"          init_cfg=dict(type='Pretrained', "
                  f"checkpoint='{dst}')))"]
        return '\n'.join(lines)

    def _tv_hints(self, dst: str) -> str:
        has_fc = any(_FC.match(k) for k in self.state_dict)
        return '\n'.join([
            'torchvision:',
            f'  model = torchvision.models.resnet{self.depth or "<depth>"}()',
            f"  model.load_state_dict(torch.load('{dst}'), strict="
            f'{has_fc})' + ('' if has_fc else '   # no fc in the file'),
            '  input: RGB in [0, 1], Normalize(mean=[0.485, 0.456, 0.406], '
            'std=[0.229, 0.224, 0.225])'])


def _fmt(values) -> str:
    """``[123.675, 116.280, 103.530]``."""
    return '[' + ', '.join(f'{float(v):.3f}' for v in values) + ']'


# --- detection and unwrapping ----------------------------------------------
def detect_d2_format(keys) -> Optional[str]:
    """``'detectron2'``, ``'caffe2'`` or ``None`` from state-dict keys."""
    keys = list(keys)
    for fmt in (DETECTRON2, CAFFE2):
        if all(any(re.search(s, k) for k in keys) for s in fmt.sentinels):
            return fmt.name
    return None


def _blobs(checkpoint: Any) -> Any:
    """Detectron1 detection files keep their blobs in ``['blobs']``."""
    if isinstance(checkpoint, Mapping) and isinstance(
            checkpoint.get('blobs'), Mapping) and 'model' not in checkpoint:
        return {'blobs': {k: v for k, v in checkpoint['blobs'].items()
                          if isinstance(v, torch.Tensor)}}
    return checkpoint


# --- tensor surgery ----------------------------------------------------------
def fill_frozen_bn_stats(state_dict: Dict[str, torch.Tensor],
                         eps: float = FROZEN_BN_EPS) -> List[str]:
    """Give scale/bias-only norm layers FrozenBN's identity statistics.

    Caffe2 (MSRA) files store FrozenBN as an affine ``x * scale + bias``.
    detectron2's ``FrozenBatchNorm2d`` keeps its initial buffers
    ``running_mean = 0`` and ``running_var = 1 - eps`` for them, so its
    ``batch_norm(eps)`` computes exactly the affine; the same buffers make
    MMDetection's BN (eps=1e-5, eval mode) compute exactly what detectron2
    computes (``running_var = 1`` would scale by ``1/sqrt(1 + 1e-5)``).

    Args:
        state_dict (dict): Canonical names; modified in place.
        eps (float): The BN eps of the target. Defaults to 1e-5.

    Returns:
        list[str]: The norm layers that were completed.
    """
    filled = []
    norms = re.compile(r'(?:^|\.)(?:bn\d|downsample\.1)\.weight$')
    for key in [k for k in state_dict if norms.search(k)]:
        layer = key[:-len('weight')]
        if layer + 'running_mean' in state_dict:
            continue
        w = state_dict[key]
        state_dict[layer + 'running_mean'] = torch.zeros_like(w)
        state_dict[layer + 'running_var'] = torch.ones_like(w) - eps
        filled.append(layer[:-1])
    return filled


def to_numpy_tree(obj: Any) -> Any:
    """Tensors inside nested dicts -> numpy arrays (no copy on CPU)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy()
    if isinstance(obj, dict):
        return {k: to_numpy_tree(v) for k, v in obj.items()}
    return obj


# --- conversion --------------------------------------------------------------
def _chain(first: ConversionResult, fmt: Format) -> ConversionResult:
    """Rename ``first``'s output with ``fmt``; the report keeps the original
    source keys."""
    second = convert_state_dict(first.state_dict, fmt)
    origin = {r.new: r for r in first.report.kept}
    mapped = {r.old: r.new for r in second.report.kept}
    rep = first.report
    kept = [KeyRecord(origin[r.old].old, r.new, origin[r.old].reason, r.shape)
            for r in second.report.kept]
    dropped = list(rep.dropped) + [
        KeyRecord(origin[r.old].old, None, r.reason, r.shape)
        for r in second.report.dropped]
    aliases = [replace(r, new=mapped[r.new]) for r in rep.aliases
               if r.new in mapped]
    dropped += [replace(r, new=None) for r in rep.aliases
                if r.new not in mapped]
    report = replace(rep, kept=kept, dropped=dropped, aliases=aliases)
    return ConversionResult(second.state_dict, report)


def _drop_fc(result: ConversionResult, reason: str) -> None:
    """Move the classifier of a canonical result to the dropped list."""
    rep = result.report
    fc = [r for r in rep.kept if _FC.match(r.new)]
    for r in fc:
        del result.state_dict[r.new]
        rep.dropped.append(KeyRecord(r.old, None, reason, r.shape))
    rep.kept = [r for r in rep.kept if not _FC.match(r.new)]
    rep.aliases = [r for r in rep.aliases if not _FC.match(r.new)]


def _to_canonical(checkpoint: Any, fmt: str, select: Optional[str],
                  prefix: Optional[str], keep_fc: bool
                  ) -> Tuple[ConversionResult, str, Dict[str, Any]]:
    """Source checkpoint -> canonical names (classifier kept if present);
    also returns the format and the source state dict."""
    unwrapped = unwrap(_blobs(checkpoint), select)
    if prefix:
        unwrapped = _take_prefix(unwrapped, prefix)
    sd = unwrapped.state_dict
    how = 'given'
    if fmt == 'auto':
        name = detect_d2_format(sd)
        if name is not None:
            fmt, how = name, (f'detected: {D2_FORMATS[name].title}')
        else:
            det = detect_format(checkpoint if not prefix else sd, select,
                                unwrapped)
            fmt, how = det.name, f'detected: {det.reason}'
    if fmt == 'caffe2':
        result = _chain(convert_state_dict(sd, CAFFE2), DETECTRON2)
    elif fmt == 'detectron2':
        result = convert_state_dict(sd, DETECTRON2)
    elif fmt == 'torchvision' and keep_fc:
        result = convert_state_dict(sd, _TORCHVISION_FC)
    else:
        result = convert_state_dict(sd, get_format(fmt))
    result.report.detection = how
    result.report.where = unwrapped.where
    result.report.ignored_entries = list(unwrapped.ignored)
    return result, fmt, sd


def _style(style: str, fmt: str, bottleneck: bool, author: Optional[str],
           recorded: Optional[Mapping]) -> Tuple[str, str, bool]:
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
    if fmt == 'caffe2':
        return ('caffe', 'Caffe2 blobs: the MSRA ResNets put the stride in '
                'the 1x1 conv (STRIDE_IN_1X1: True)', False)
    if author and author.lower() in _TORCHVISION_AUTHORS:
        return ('pytorch', f'__author__ {author!r}: a torchvision ResNet '
                '(stride in the 3x3 conv, STRIDE_IN_1X1: False)', False)
    if fmt in _TORCHVISION_SOURCES:
        return ('pytorch', f'{fmt}: a torchvision ResNet (stride in the 3x3 '
                'conv)', False)
    if fmt == 'detectron2':
        return ('caffe', "detectron2's default STRIDE_IN_1X1: True (model-zoo "
                'models start from MSRA R-50/R-101); use --style pytorch if '
                'it was trained with STRIDE_IN_1X1: False (detrex, '
                'torchvision-initialised)', True)
    return ('pytorch', "MMDetection's default style; use --style caffe if "
            "it was trained with style='caffe'", True)


def _recorded(checkpoint: Mapping) -> Optional[Mapping]:
    """Style/normalisation mmconv wrote into an earlier output: the
    ``mmconv`` entry of its detectron2 files, ``meta`` of its MMDetection
    files."""
    for key in ('mmconv', 'meta'):
        entry = checkpoint.get(key)
        if isinstance(entry, Mapping) and 'stride_in_1x1' in entry:
            return entry
    return None


def _pixel(style: str, fmt: str, sd: Mapping[str, Any],
           recorded: Optional[Mapping]) -> Preprocessing:
    """The input normalisation the source weights expect."""
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
    if style == 'caffe' or fmt == 'caffe2':
        return MSRA_PIXEL
    return TORCHVISION_PIXEL


def convert_resnet(checkpoint: Any, to: str = 'mmdet', fmt: str = 'auto', *,
                   style: str = 'auto', keep_fc: bool = False,
                   select: Optional[str] = None,
                   prefix: Optional[str] = None) -> ResNetConversion:
    """Convert a loaded ResNet checkpoint of any supported layout.

    Args:
        checkpoint: What :func:`mmconv.io.load_file` returned.
        to (str): ``'mmdet'``, ``'detectron2'`` or ``'torchvision'``.
        fmt (str): Source format: ``'auto'``, ``'detectron2'``,
            ``'caffe2'`` or a name of :data:`mmconv.formats.FORMATS`.
        style (str): ``'auto'``, ``'caffe'`` or ``'pytorch'``: the style of
            the source network (for ``'auto'`` see the report's reason).
        keep_fc (bool): Keep an ImageNet classifier (``fc``) for the
            detectron2/torchvision targets. Defaults to False.
        select (str, optional): ``'teacher'``/``'student'`` (DINO).
        prefix (str, optional): Convert only keys under this prefix.

    Returns:
        ResNetConversion: Weights in the target's names, report, style.

    Raises:
        ConversionError: Unknown target/style/layout, empty result.
    """
    if to not in TARGETS:
        raise ConversionError(f'unknown target {to!r}; use one of '
                              f'{", ".join(TARGETS)}')
    if style not in STYLES:
        raise ConversionError(f'unknown style {style!r}; use one of '
                              f'{", ".join(STYLES)}')
    result, fmt, source = _to_canonical(checkpoint, fmt, select, prefix,
                                        keep_fc)
    sd = result.state_dict
    filled = fill_frozen_bn_stats(sd) if fmt in D2_FORMATS else []
    if to == 'mmdet' or not keep_fc:
        _drop_fc(result, 'ImageNet classifier (not in the backbone; '
                 + ('--keep-fc keeps it)' if to != 'mmdet' else
                    'MMDetection backbones have none)'))
    if not sd:
        raise ConversionError('no ResNet backbone tensor in the checkpoint '
                              f'(format {fmt})')
    check = check_resnet(k for k in sd if not _FC.match(k))
    result.report.backbone = check
    meta = checkpoint if isinstance(checkpoint, Mapping) else {}
    author = meta.get('__author__') if isinstance(
        meta.get('__author__'), str) else None
    recorded = _recorded(meta)
    bottleneck = check.depth is not None and check.depth >= 50
    st, why, assumed = _style(style, fmt, bottleneck, author, recorded)
    pixel = _pixel(st, fmt, source if fmt == 'detectron2' else {}, recorded)
    warnings = []
    if not check.complete:
        warnings.append(check.describe())
    if assumed:
        warnings.append(f'style {st!r} is assumed, not read from the file: '
                        'check the training config')
    if to == 'torchvision' and st == 'caffe' and bottleneck:
        warnings.append("torchvision's Bottleneck strides in the 3x3 conv; "
                        'this caffe-style (stride-in-1x1) backbone computes '
                        'different features there')
    if to == 'detectron2':
        result = _chain(result, TO_DETECTRON2)
        result.report.backbone = check
    return ResNetConversion(result.state_dict, result.report, to,
                            check.depth, st, why, assumed, pixel, filled,
                            warnings, author)


def build_object(conv: ResNetConversion, src: str) -> Dict[str, Any]:
    """What to save for ``conv.target``.

    * detectron2: ``{'model': {name: ndarray}, '__author__': ...,
      'matching_heuristics': True, 'mmconv': {plain provenance}}``
      (``__author__`` is ``'torchvision'`` for torchvision sources, as
      detectron2's converter writes);
    * mmdet: ``{'state_dict': ..., 'meta': {...}}`` as every mmconv output;
    * torchvision: the bare state dict, as torchvision's files.
    """
    meta = {'converter': 'mmconv', 'mmconv_version': __version__,
            'source_file': os.path.basename(os.fspath(src))}
    meta.update(conv.report.to_meta())
    meta.update(conv.meta())
    if conv.target == 'detectron2':
        fmt = conv.report.format
        author = 'torchvision' if fmt == 'torchvision' else f'mmconv:{fmt}'
        return {'model': to_numpy_tree(conv.state_dict),
                '__author__': author, 'matching_heuristics': True,
                'mmconv': meta}
    if conv.target == 'mmdet':
        return {'state_dict': conv.state_dict, 'meta': meta}
    return dict(conv.state_dict)


@dataclass
class WrittenResNet:
    """A finished conversion: result, final path, sha256 (``publish``)."""

    conversion: ResNetConversion
    path: str
    sha256: Optional[str]


def convert_file_to(src: str, dst: str, to: str = 'mmdet',
                    fmt: str = 'auto', *, style: str = 'auto',
                    keep_fc: bool = False, select: Optional[str] = None,
                    prefix: Optional[str] = None, unsafe: bool = False,
                    force: bool = False, publish: bool = False,
                    out_format: Optional[str] = None,
                    warn: Optional[Callable[[str], None]] = None
                    ) -> WrittenResNet:
    """Load ``src`` safely, convert it for ``to`` and write ``dst``
    atomically (nothing is written on any error).

    detectron2 output must be named ``*.pkl`` (detectron2 reads numpy-array
    files by that extension); it is a plain pickle of numpy arrays.
    ``out_format`` (``'pytorch'``/``'safetensors'``) applies to MMDetection
    output only.

    Returns:
        WrittenResNet: Conversion, final path, sha256.
    """
    from .io import check_destination, load_file, save_file
    if to == 'detectron2' and not os.fspath(dst).endswith('.pkl'):
        raise OutputError(f'{dst}: detectron2 weights must be a .pkl file '
                          '(DetectionCheckpointer reads numpy-array files '
                          'by that extension); name it *.pkl')
    if out_format not in (None, 'pytorch') and to != 'mmdet':
        raise OutputError(f'{dst}: --out-format {out_format} is for '
                          'MMDetection output only')
    if to == 'mmdet' and out_format is None and os.fspath(dst).endswith(
            '.safetensors'):
        out_format = 'safetensors'
    check_destination(dst, src, force)
    checkpoint = load_file(src, unsafe=unsafe, warn=warn)
    conv = convert_resnet(checkpoint, to, fmt, style=style, keep_fc=keep_fc,
                          select=select, prefix=prefix)
    obj = build_object(conv, src)
    path, sha = save_file(obj, dst, src=src, force=force, publish=publish,
                          out_format='pkl' if to == 'detectron2'
                          else out_format or 'pytorch')
    return WrittenResNet(conv, path, sha)
