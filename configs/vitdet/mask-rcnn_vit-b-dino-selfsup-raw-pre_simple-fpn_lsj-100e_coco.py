# ViTDet Mask R-CNN (see the MAE config) with a DINO ViT-B/16 backbone,
# initialised from the raw DINO full checkpoint (teacher network) through
# mmconv; dino_vitbase16_pretrain.pth (the released backbone) works too
# (method='auto'). Point checkpoint= at your file:
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
_base_ = './mask-rcnn_vit-b-mae-selfsup-raw-pre_simple-fpn_lsj-100e_coco.py'

model = dict(
    backbone=dict(
        init_cfg=dict(
            checkpoint='./dino_vitbase16_pretrain_full_checkpoint.pth',
            method='auto',
            select='teacher')))
