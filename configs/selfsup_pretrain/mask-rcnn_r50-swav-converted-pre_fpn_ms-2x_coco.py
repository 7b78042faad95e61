# Mask R-CNN R50-FPN with a SwAV backbone converted beforehand:
#   python tools/model_converters/selfsup2mmdet.py \
#       swav_800ep_pretrain.pth.tar ./swav_r50_800ep_pretrain.pth --selfsup swav
_base_ = 'mmdet::selfsup_pretrain/mask-rcnn_r50-swav-pre_fpn_ms-2x_coco.py'

custom_imports = dict(imports=['mmconv'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        init_cfg=dict(
            _delete_=True,
            type='Pretrained',
            checkpoint='./swav_r50_800ep_pretrain.pth')))

custom_hooks = [dict(type='PretrainedLoadCheckHook')]
