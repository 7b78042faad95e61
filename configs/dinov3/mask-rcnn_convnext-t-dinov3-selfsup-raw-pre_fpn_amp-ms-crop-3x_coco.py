# MMDetection's Mask R-CNN ConvNeXt-T recipe (as ../convnext/mask-rcnn_
# convnext-t-p4-w7-official-raw-pre_fpn_amp-ms-crop-3x_coco.py:
# mmpretrain.ConvNeXt, out_indices [0, 1, 2, 3], drop path 0.4, AdamW with
# layer-wise lr decay, AMP, multi-scale + crop, 3x) with the distilled DINOv3
# ConvNeXt-T from the raw official file
# dinov3_convnext_tiny_pretrain_lvd1689m-21b726bb.pth (or the eval
# teacher_checkpoint.pth, a training checkpoint directory, a transformers
# DINOv3ConvNextModel folder) through mmconv. The arch is given as the depths
# and channels of the official convnext_sizes['tiny']. The official final
# norm (stored twice, norm and norms.3) becomes norm3; norm0-norm2 keep their
# initialisation (the official model has none: Identity).
# Target: the DINOv3 paper reports no Mask R-CNN result for ConvNeXt-T
# (README).
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
_base_ = ('../convnext/mask-rcnn_convnext-t-p4-w7-official-raw-pre_'
          'fpn_amp-ms-crop-3x_coco.py')

model = dict(
    backbone=dict(
        arch=dict(
            _delete_=True, depths=[3, 3, 9, 3],
            channels=[96, 192, 384, 768]),
        init_cfg=dict(
            checkpoint='./dinov3_convnext_tiny_pretrain_lvd1689m-21b726bb.pth',
            method='auto')))
