# Mask R-CNN R50-FPN with a MoCo v2 backbone converted beforehand:
#   python tools/model_converters/selfsup2mmdet.py \
#       moco_v2_800ep_pretrain.pth.tar ./mocov2_r50_800ep_pretrain.pth --selfsup moco
_base_ = 'mmdet::selfsup_pretrain/mask-rcnn_r50-mocov2-pre_fpn_1x_coco.py'

custom_imports = dict(imports=['mmconv'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        init_cfg=dict(
            _delete_=True,
            type='Pretrained',
            checkpoint='./mocov2_r50_800ep_pretrain.pth')))

custom_hooks = [dict(type='PretrainedLoadCheckHook')]
