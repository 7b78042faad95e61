# As the DINOv3 ViT-B config, with the distilled DINOv3 ViT-L/16 from
# dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth (1024 channels, 16 heads, 24
# blocks). Global attention in the layers the official DINOv3 detector reads,
# [5, 11, 17, 23] (dinov3/hub/detectors.py: layers_to_use = m * n_blocks //
# 4 - 1, m = 1..4; also ViTDet-L's global blocks); the last feeds the simple
# feature pyramid. ViTDet's ViT-L recipe: drop path 0.4, lr decay 0.8.
# Target: the DINOv3 paper reports no Mask R-CNN result for ViT-L (README).
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
_base_ = './mask-rcnn_vit-b-dinov3-selfsup-raw-pre_simple-fpn_lsj-100e_coco.py'

model = dict(
    backbone=dict(
        embed_dim=1024,
        depth=24,
        num_heads=16,
        drop_path_rate=0.4,
        global_attn_indexes=(5, 11, 17, 23),
        init_cfg=dict(
            checkpoint='./dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth')),
    neck=dict(backbone_channel=1024))

optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.8))
