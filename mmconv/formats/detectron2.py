# Copyright (c) mmconv contributors. All rights reserved.
"""detectron2 / detrex ResNets and Caffe2 (MSRA, Detectron1) blobs.

Sources of the ResNet family (:mod:`.resnet`): detectron2 model zoo
(``backbone.bottom_up.res2...``), detrex (``backbone.res2...``), bare
``res2...`` (.pkl or .pth), and the Caffe2 MSRA ``R-50.pkl``/``R-101.pkl``
blobs (``conv1_w``, ``res2_0_branch2a_w`` ...; Detectron1 detection files
keep them in ``['blobs']``). Caffe2 names are first renamed to detectron2's
(:data:`CAFFE2_RULES`, as ``detectron2/checkpoint/c2_model_loading.py``
reads them), then with :data:`DETECTRON2_RULES` to the canonical names.

The ResNet renames are :data:`~.resnet.DETECTRON2_NAMES`, written so that
the ``--to detectron2`` table is derived from them; the rest of a detector
is dropped. :data:`FROZEN_BN_STATISTICS` (``derive``) gives scale/bias-only
FrozenBN layers the statistics detectron2's ``FrozenBatchNorm2d`` keeps for
them; :func:`count_frozen_bn` records how many.
"""
from typing import Tuple

from ..ops import Fill
from ..spec import Conversion, Request, Rule, SourceFormat, register
from .resnet import DETECTRON2_NAMES, MSRA_PIXEL, StyleFact

__all__ = ['DETECTRON2_RULES', 'CAFFE2_RULES', 'FROZEN_BN_EPS',
           'FROZEN_BN_STATISTICS', 'count_frozen_bn', 'DETECTRON2',
           'CAFFE2']

#: eps of detectron2's ``FrozenBatchNorm2d`` and of MMDetection's BN.
FROZEN_BN_EPS = 1e-5

# fmt: off
# --- detectron2 -> canonical ------------------------------------------------
DETECTRON2_RULES: Tuple[Rule, ...] = DETECTRON2_NAMES + (
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
    (r'^\w+_momentum$',    None,                           'SGD momentum (detectron2 drops *_momentum too)'),
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

# --- FrozenBN statistics -------------------------------------------------
# Caffe2 (MSRA) files store FrozenBN as an affine ``x * scale + bias``.
# detectron2's ``FrozenBatchNorm2d`` keeps its initial buffers
# ``running_mean = 0`` and ``running_var = 1 - eps`` for them, so its
# ``batch_norm(eps)`` computes exactly the affine; the same buffers make
# MMDetection's BN (eps=1e-5, eval mode) compute exactly what detectron2
# computes (``running_var = 1`` would scale by ``1/sqrt(1 + 1e-5)``).
_NORM_WEIGHT = r'((?:^|\.)(?:bn\d|downsample\.1)\.)weight$'
#: Derive rules (canonical names): the statistics of every norm layer that
#: has none.
FROZEN_BN_STATISTICS: Tuple[Rule, ...] = (
    Rule(_NORM_WEIGHT, r'\1running_mean', 'FrozenBN running_mean',
         ops=(Fill(0.0, 'FrozenBN running_mean = 0'), )),
    Rule(_NORM_WEIGHT, r'\1running_var', 'FrozenBN running_var',
         ops=(Fill(1 - FROZEN_BN_EPS, 'FrozenBN running_var = 1 - eps'), )),
)


def count_frozen_bn(conv: 'Conversion', request: 'Request') -> None:
    """Record how many norm layers :data:`FROZEN_BN_STATISTICS` completed
    (``meta['frozen_bn_filled']``; the family's summary line reads it)."""
    conv.meta['frozen_bn_filled'] = len(
        {key.rsplit('.', 1)[0] for key in conv.derived})


DETECTRON2 = SourceFormat(
    'detectron2', 'resnet', 'detectron2 / detrex ResNet',
    rules=DETECTRON2_RULES,
    sentinels=(r'(?:^|\.)(?:stem\.conv1|res2\.0\.conv1)\.weight$', ),
    containers=('model', ),
    derive=FROZEN_BN_STATISTICS,
    surgery=(count_frozen_bn, ),
    released=('model_final_f10217.pkl', 'R-50.pkl (torchvision, converted)'),
    facts=dict(pixel_in_file=True, style=StyleFact(
        'caffe', "detectron2's default STRIDE_IN_1X1: True (model-zoo "
        'models start from MSRA R-50/R-101); use --style pytorch if it was '
        'trained with STRIDE_IN_1X1: False (detrex, torchvision-initialised)',
        assumed=True)),
    source='facebookresearch/detectron2: {model, __author__[, '
    'matching_heuristics]} .pkl of numpy arrays; training .pth {model, ...}')
CAFFE2 = SourceFormat(
    'caffe2', 'resnet', 'Caffe2 / Detectron1 ResNet blobs (MSRA)',
    rules=CAFFE2_RULES, then=DETECTRON2_RULES,
    sentinels=(r'^(?:conv1_w|res2_0_branch2a_w)$', ),
    containers=('blobs', ),
    derive=FROZEN_BN_STATISTICS,
    surgery=(count_frozen_bn, ),
    released=('R-50.pkl', 'R-101.pkl', 'Detectron1 model_final.pkl'),
    facts=dict(pixel=MSRA_PIXEL, style=StyleFact(
        'caffe', 'Caffe2 blobs: the MSRA ResNets put the stride in the 1x1 '
        'conv (STRIDE_IN_1X1: True)')),
    source='ImageNetPretrained/MSRA: bare dict of numpy blobs; Detectron1 '
    'detection models: {blobs, cfg}')

register(DETECTRON2, CAFFE2)
