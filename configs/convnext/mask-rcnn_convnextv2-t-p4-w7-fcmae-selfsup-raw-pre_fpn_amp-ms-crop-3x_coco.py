# The Mask R-CNN ConvNeXt-T recipe of MMDetection (see the official-raw
# config) with a ConvNeXt V2-T backbone (GRN, no layer scale: use_grn=True,
# layer_scale_init_value=0. as mmpretrain's ConvNeXt V2 configs), initialised
# from the raw FCMAE pre-training file convnextv2_tiny_1k_224_fcmae.pt
# (facebookresearch/ConvNeXt-V2: sparse MinkowskiEngine encoder + decoder)
# through mmconv, which densifies the sparse kernels as the official
# fine-tuning code does and drops the decoder. FCMAE has no final norm:
# norm0-norm3 keep their initialisation. The optimisation recipe is the v1
# one (the ConvNeXt V2 authors publish no detection recipe).
# Point checkpoint= at your file:
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
_base_ = './mask-rcnn_convnext-t-p4-w7-official-raw-pre_fpn_amp-ms-crop-3x_coco.py'  # noqa: E501

model = dict(
    backbone=dict(
        use_grn=True,
        layer_scale_init_value=0.,
        init_cfg=dict(checkpoint='./convnextv2_tiny_1k_224_fcmae.pt')))
