# As the DINOv2 ViT-S/14 config, from dinov2_vits14_reg4_pretrain.pth.
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
_base_ = ('./mask-rcnn_vit-s14-dinov2-selfsup-raw-pre_'
          'simple-fpn_lsj-100e_coco.py')

model = dict(
    backbone=dict(
        init_cfg=dict(checkpoint='./dinov2_vits14_reg4_pretrain.pth')))
