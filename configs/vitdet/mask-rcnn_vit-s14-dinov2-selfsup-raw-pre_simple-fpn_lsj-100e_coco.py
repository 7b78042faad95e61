# As the DINOv2 ViT-B/14 config with ViT-S/14 (384 channels, 6 heads) from
# dinov2_vits14_pretrain.pth.
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
_base_ = ('./mask-rcnn_vit-b14-dinov2-selfsup-raw-pre_'
          'simple-fpn_lsj-100e_coco.py')

model = dict(
    backbone=dict(
        embed_dim=384,
        num_heads=6,
        init_cfg=dict(checkpoint='./dinov2_vits14_pretrain.pth')),
    neck=dict(backbone_channel=384))
