# MMDetection's Mask R-CNN ConvNeXt-T recipe (mmdet::convnext/mask-rcnn_
# convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py: mmpretrain.ConvNeXt with
# out_indices [0, 1, 2, 3], drop path 0.4, AdamW with layer-wise lr decay,
# AMP, multi-scale + crop, 3x), initialised from the raw official
# facebookresearch/ConvNeXt file through mmconv: convnext_tiny_1k_224_ema.pth
# ({'model'}), a training checkpoint-*.pth (model weights; select='ema' for
# its model_ema), or a timm / mmpretrain ConvNeXt-T file (method='auto').
# The official final norm becomes norm3; norm0-norm2 keep their
# initialisation (as in MMDetection's recipe). Point checkpoint= at your file:
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
_base_ = 'mmdet::convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py'  # noqa: E501

custom_imports = dict(imports=['mmconv'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        init_cfg=dict(
            _delete_=True,
            type='SelfSupPretrained',
            checkpoint='./convnext_tiny_1k_224_ema.pth',
            method='auto')))

custom_hooks = [dict(type='PretrainedLoadCheckHook')]
