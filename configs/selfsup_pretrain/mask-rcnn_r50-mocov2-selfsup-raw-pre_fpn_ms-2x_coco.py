# Mask R-CNN R50-FPN with a MoCo v2 backbone, initialised from the raw
# released file through mmconv (no conversion step). Point checkpoint= at your
# file:
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
_base_ = 'mmdet::selfsup_pretrain/mask-rcnn_r50-mocov2-pre_fpn_ms-2x_coco.py'

custom_imports = dict(imports=['mmconv'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        init_cfg=dict(
            _delete_=True,
            type='SelfSupPretrained',
            checkpoint='./moco_v2_800ep_pretrain.pth.tar',
            method='moco')))

custom_hooks = [dict(type='PretrainedLoadCheckHook')]
