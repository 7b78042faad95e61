# MoCo v2 Mask R-CNN R50-FPN 1x with SyncBN in the backbone, FPN and heads
# (4conv1fc box head), as MoCo's detection recipe uses.
_base_ = './mask-rcnn_r50-mocov2-selfsup-raw-pre_fpn_1x_coco.py'

norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    neck=dict(norm_cfg=norm_cfg),
    roi_head=dict(
        bbox_head=dict(
            type='Shared4Conv1FCBBoxHead',
            conv_out_channels=256,
            norm_cfg=norm_cfg),
        mask_head=dict(norm_cfg=norm_cfg)))
