# ViTDet Mask R-CNN (see the MAE config) with a MoCo v3 ViT-B/16 backbone
# (module.base_encoder of the released vit-b-300ep.pth.tar) through mmconv.
# Point checkpoint= at your file:
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
_base_ = './mask-rcnn_vit-b-mae-selfsup-raw-pre_simple-fpn_lsj-100e_coco.py'

model = dict(
    backbone=dict(
        init_cfg=dict(
            checkpoint='./vit-b-300ep.pth.tar', method='mocov3_vit')))
