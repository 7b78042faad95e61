# Copyright (c) mmconv contributors. All rights reserved.
"""Self-supervised ResNet formats, torchvision and MMDetection backbones.

Each :class:`~mmconv.spec.SourceFormat` here is data. ``rules`` is an
ordered tuple of ``(regex, replacement, reason)``; the first regex that
matches a key decides it: the key is renamed with
``re.sub(regex, replacement, key)`` or, when the replacement is ``None``,
dropped with ``reason``. A key no rule matches is dropped as "outside the
<format> layout". The output naming is the canonical ResNet naming of
:mod:`.resnet` (``conv1``, ``bn1``, ``layer1.0.conv1`` ..., ``fc``).

``sentinels`` name the keys that identify a format during auto-detection
(:mod:`mmconv.detect`), ``containers`` the checkpoint entries that hold
its state dict (:func:`mmconv.containers.unwrap`), ``released`` the files
the authors publish. Formats whose authors also publish a bare backbone file
accept it too (:data:`~.resnet.BARE_BACKBONE` rules).
"""
from typing import Tuple

from ..spec import SourceFormat, register
from .resnet import BACKBONE, BARE_BACKBONE, TORCHVISION_NETWORK

__all__ = ['SELFSUP_FORMATS']


def _resnet(name: str, title: str, **kwargs) -> SourceFormat:
    """A format of the ResNet family."""
    return SourceFormat(name, 'resnet', title, **kwargs)


# fmt: off
SELFSUP_FORMATS: Tuple[SourceFormat, ...] = (
    _resnet(
        'moco', 'MoCo v1/v2',
        rules=(
            (r'^(?:module\.)?encoder_q\.fc\.', None, 'MoCo projection head (fc / MLP)'),
            (r'^(?:module\.)?encoder_q\.',     '',   'query encoder = backbone'),
            (r'^(?:module\.)?encoder_k\.',     None, 'key (momentum) encoder'),
            (r'^(?:module\.)?queue(?:_ptr)?$', None, 'negative-key queue'),
        ),
        sentinels=(r'^(?:module\.)?encoder_q\.conv1\.weight$',),
        released=('moco_v1_200ep_pretrain.pth.tar', 'moco_v2_800ep_pretrain.pth.tar'),
        facts=TORCHVISION_NETWORK,
        source='facebookresearch/moco: main_moco.py saves {epoch, arch, state_dict, optimizer} of the DDP model'),
    _resnet(
        'mocov3', 'MoCo v3 (ResNet)',
        rules=(
            (r'^(?:module\.)?base_encoder\.fc\.',   None, 'MoCo v3 projection MLP'),
            (r'^(?:module\.)?base_encoder\.',       '',   'base encoder = backbone'),
            (r'^(?:module\.)?momentum_encoder\.',   None, 'momentum encoder'),
            (r'^(?:module\.)?predictor\.',          None, 'MoCo v3 prediction MLP'),
        ),
        sentinels=(r'^(?:module\.)?base_encoder\.conv1\.weight$',),
        released=('r-50-1000ep.pth.tar', 'r-50-300ep.pth.tar'),
        facts=TORCHVISION_NETWORK,
        source='facebookresearch/moco-v3: main_moco.py saves {epoch, arch, state_dict, optimizer, scaler}'),
    _resnet(
        'swav', 'SwAV',
        rules=(
            (r'^(?:module\.)?projection_head\.',     None, 'SwAV projection head'),
            (r'^(?:module\.)?prototypes\.',          None, 'SwAV prototypes'),
            (rf'^(?:module\.)?({BACKBONE})',         r'\1', 'backbone'),
        ),
        sentinels=(r'^(?:module\.)?prototypes\.weight$', r'^(?:module\.)?projection_head\.'),
        released=('swav_800ep_pretrain.pth.tar',),
        facts=TORCHVISION_NETWORK,
        source='facebookresearch/swav: released files are the bare DDP state dict; training checkpoints wrap it in state_dict'),
    _resnet(
        'densecl', 'DenseCL',
        rules=(
            (r'^backbone\.',                    '',   'backbone'),
            (r'^encoder_q\.0\.',                '',   'query encoder backbone (alias of backbone.*)'),
            (r'^encoder_q\.1\.',                None, 'DenseCL neck (global and dense projection)'),
            (r'^encoder_k\.',                   None, 'key (momentum) encoder'),
            (r'^queue2?(?:_ptr)?$',             None, 'negative-key queues (global and dense)'),
        ) + BARE_BACKBONE,
        sentinels=(r'^queue2$', r'^encoder_q\.1\.mlp2\.'),
        released=('densecl_r50_imagenet_200ep.pth', 'densecl_r50_coco_1600ep.pth'),
        facts=TORCHVISION_NETWORK,
        source='WXinlong/DenseCL (OpenSelfSup): mmcv checkpoint {meta, state_dict, optimizer}; released files via extract_backbone_weights.py'),
    _resnet(
        'simsiam', 'SimSiam',
        rules=(
            (r'^(?:module\.)?encoder\.fc\.',   None, 'SimSiam projection MLP'),
            (r'^(?:module\.)?encoder\.',       '',   'encoder = backbone'),
            (r'^(?:module\.)?predictor\.',     None, 'SimSiam prediction MLP'),
        ),
        sentinels=(r'^(?:module\.)?encoder\.conv1\.weight$',),
        released=('checkpoint_0099.pth.tar',),
        facts=TORCHVISION_NETWORK,
        source='facebookresearch/simsiam: main_simsiam.py saves {epoch, arch, state_dict, optimizer}'),
    _resnet(
        'barlowtwins', 'Barlow Twins',
        rules=(
            (r'^(?:module\.)?backbone\.',       '',   'backbone'),
            (r'^(?:module\.)?projector\.',      None, 'Barlow Twins projector'),
            (r'^(?:module\.)?bn\.',             None, 'BatchNorm of the cross-correlation matrix'),
        ) + BARE_BACKBONE,
        sentinels=(r'^(?:module\.)?bn\.running_mean$', r'^(?:module\.)?projector\.'),
        containers=('model', ),
        released=('resnet50.pth', 'checkpoint.pth'),
        facts=TORCHVISION_NETWORK,
        source='facebookresearch/barlowtwins: main.py saves {epoch, model, optimizer}; resnet50.pth is the bare backbone'),
    _resnet(
        'vicreg', 'VICReg',
        rules=(
            (r'^(?:module\.)?backbone\.',       '',   'backbone'),
            (r'^(?:module\.)?projector\.',      None, 'VICReg expander (projector)'),
        ) + BARE_BACKBONE,
        sentinels=(r'^(?:module\.)?projector\.',),
        containers=('model', ),
        released=('resnet50.pth', 'model.pth'),
        facts=TORCHVISION_NETWORK,
        source='facebookresearch/vicreg: main_vicreg.py saves {epoch, model, optimizer}; resnet50.pth is the bare backbone'),
    _resnet(
        'dino', 'DINO (ResNet-50)',
        rules=(
            (r'^(?:module\.)?backbone\.fc\.',   None, 'identity classifier slot'),
            (r'^(?:module\.)?backbone\.',       '',   'backbone'),
            (r'^(?:module\.)?head\.',           None, 'DINO projection head'),
        ) + BARE_BACKBONE,
        sentinels=(r'^(?:module\.)?head\.last_layer\.weight_[gv]$', r'^(?:module\.)?backbone\.(?:conv1|layer1)\.'),
        containers=('teacher', 'student'),
        released=('dino_resnet50_pretrain_full_checkpoint.pth', 'dino_resnet50_pretrain.pth'),
        facts=TORCHVISION_NETWORK,
        source='facebookresearch/dino: main_dino.py saves {student, teacher, optimizer, epoch, args, dino_loss}'),
    _resnet(
        'vissl', 'VISSL / ClassyVision',
        rules=(
            (rf'^_feature_blocks\.({BACKBONE})', r'\1', 'trunk'),
            (r'^_feature_blocks\.',              None, 'trunk pooling/classifier'),
            (r'^heads?\.',                       None, 'VISSL head'),
        ),
        sentinels=(r'^_feature_blocks\.conv1\.weight$',),
        containers=('classy_state_dict', 'base_model', 'model', 'trunk'),
        facts=TORCHVISION_NETWORK,
        source="facebookresearch/vissl: checkpoint['classy_state_dict']['base_model']['model']['trunk']"),
    _resnet(
        'mmpretrain', 'mmpretrain / mmselfsup algorithm (MoCoV2, MoCoV3, SwAV, DenseCL, BYOL, SimCLR, BarlowTwins, SimSiam, ...)',
        rules=(
            (r'^backbone\.fc\.',                 None, 'classifier slot of the backbone'),
            (r'^backbone\.',                     '',   'backbone'),
            (r'^neck\.',                         None, 'self-supervised neck (projector)'),
            (r'^head\.',                         None, 'self-supervised head'),
            (r'^(?:momentum_encoder|target_net|encoder_k)\.', None, 'momentum / target encoder'),
            (r'^queue\w*$',                      None, 'negative-key queue'),
            (r'^(?:data_preprocessor|rpn_head|roi_head|bbox_head|mask_head)\.', None, 'not part of the backbone'),
        ),
        sentinels=(r'^backbone\.conv1\.weight$',),
        source='open-mmlab/mmpretrain (mmselfsup): MMEngine checkpoint {meta, state_dict, message_hub, optimizer, ...}'),
    _resnet(
        'torchvision', 'torchvision ResNet',
        rules=BARE_BACKBONE,
        sentinels=(r'^fc\.weight$', r'^conv1\.weight$'),
        containers=(),
        released=('resnet50-0676ba61.pth', 'resnet50-11ad3fa6.pth'),
        facts=dict(TORCHVISION_NETWORK, d2_author='torchvision'),
        source='pytorch/vision: bare state dict of torchvision.models.resnet*'),
    _resnet(
        'mmdet', 'MMDetection / mmconv ResNet backbone (already converted)',
        rules=BARE_BACKBONE,
        sentinels=(r'^conv1\.weight$',),
        source='MMDetection backbone checkpoints and mmconv output: {state_dict, meta}'),
)
# fmt: on

register(*SELFSUP_FORMATS)
