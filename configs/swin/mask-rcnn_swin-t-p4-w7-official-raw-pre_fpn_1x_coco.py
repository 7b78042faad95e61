# MMDetection's Mask R-CNN Swin-T FPN 1x recipe, initialised from the raw
# official microsoft/Swin-Transformer file through mmconv (no
# swin_converter: convert_weights=False). SelfSupPretrained renames, reorders
# the patch-merging channels, loads the final norm as norm3, drops the
# buffers MMDetection rebuilds and fails loudly unless every pre-trained
# tensor arrives (norm0-norm2 keep their initialisation: no checkpoint has
# them). The timm layout, a training checkpoint (ckpt_epoch_*.pth) or
# another window size (tables resized) work too. Point checkpoint= at
# another file with
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'

custom_imports = dict(imports=['mmconv'], allow_failed_imports=False)
# logs, before training, how many backbone tensors came from the file
custom_hooks = [dict(type='PretrainedLoadCheckHook')]

model = dict(
    backbone=dict(
        convert_weights=False,
        init_cfg=dict(
            _delete_=True,
            type='SelfSupPretrained',
            checkpoint='https://github.com/SwinTransformer/storage/releases/'
            'download/v1.0.0/swin_tiny_patch4_window7_224.pth')))
