# As the DINOv3 ViT-B config, with the distilled DINOv3 ViT-S/16 from
# dinov3_vits16_pretrain_lvd1689m-08c60483.pth (384 channels, 6 heads, 12
# blocks; global blocks 2, 5, 8, 11 = the official detector's layers).
# Target: the DINOv3 paper reports no Mask R-CNN result for ViT-S (README).
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
_base_ = './mask-rcnn_vit-b-dinov3-selfsup-raw-pre_simple-fpn_lsj-100e_coco.py'

model = dict(
    backbone=dict(
        embed_dim=384,
        num_heads=6,
        init_cfg=dict(
            checkpoint='./dinov3_vits16_pretrain_lvd1689m-08c60483.pth')),
    neck=dict(backbone_channel=384))
