# As the DINOv2 ViT-B/14 config, from dinov2_vitb14_reg4_pretrain.pth (4
# register tokens: dropped, they have no pos_embed slot).
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
_base_ = ('./mask-rcnn_vit-b14-dinov2-selfsup-raw-pre_'
          'simple-fpn_lsj-100e_coco.py')

model = dict(
    backbone=dict(
        init_cfg=dict(checkpoint='./dinov2_vitb14_reg4_pretrain.pth')))
