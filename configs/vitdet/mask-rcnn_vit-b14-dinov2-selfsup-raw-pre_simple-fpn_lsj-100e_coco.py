# ViTDet Mask R-CNN (see the MAE config) with a DINOv2 ViT-B/14 backbone from
# the raw hub file dinov2_vitb14_pretrain.pth (or a teacher_checkpoint.pth)
# through mmconv. Patch 14 keeps its patch size: the backbone map has stride
# 14 and the pyramid strides are simple_fpn_strides(14) =
# [3.5, 7, 14, 28, 56]; pos_embed (37x37 at 518 px) is interpolated to the
# input. LayerScale (ls1/ls2) is carried: layer_scale must be set.
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
_base_ = './mask-rcnn_vit-b-mae-selfsup-raw-pre_simple-fpn_lsj-100e_coco.py'

strides = [3.5, 7, 14, 28, 56]  # mmconv.models.simple_fpn_strides(14)

model = dict(
    backbone=dict(
        img_size=518,
        patch_size=14,
        layer_scale=1e-5,
        init_cfg=dict(
            checkpoint='./dinov2_vitb14_pretrain.pth', method='dinov2')),
    rpn_head=dict(anchor_generator=dict(strides=strides)),
    roi_head=dict(
        bbox_roi_extractor=dict(featmap_strides=strides[:4]),
        mask_roi_extractor=dict(featmap_strides=strides[:4])))
