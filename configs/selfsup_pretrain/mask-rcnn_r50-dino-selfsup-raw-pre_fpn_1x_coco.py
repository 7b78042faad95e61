# Mask R-CNN R50-FPN 1x with a DINO (teacher) backbone (MMDetection's self-
# supervised recipe: SyncBN, frozen_stages=0, norm_eval=False), initialised
# from the raw file through mmconv. Point checkpoint= at your file:
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
_base_ = './mask-rcnn_r50-mocov2-selfsup-raw-pre_fpn_1x_coco.py'

model = dict(
    backbone=dict(
        init_cfg=dict(
            checkpoint='./dino_resnet50_pretrain_full_checkpoint.pth',
            method='dino',
            select='teacher')))
