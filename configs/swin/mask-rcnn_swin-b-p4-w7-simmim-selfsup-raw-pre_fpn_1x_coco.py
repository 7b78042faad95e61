# Mask R-CNN Swin-B FPN 1x (MMDetection's Swin recipe) initialised from a
# raw microsoft/SimMIM Swin-B pre-training checkpoint (encoder + decoder,
# img192 window 6) through mmconv: the encoder is converted, mask token and
# decoder are dropped, and the window-6 relative position tables are
# resized to the detector's window 7 by bicubic interpolation, as
# MMDetection's SwinTransformer does at load time (listed in the log).
# Point checkpoint= at your file:
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
_base_ = './mask-rcnn_swin-t-p4-w7-official-raw-pre_fpn_1x_coco.py'

model = dict(
    backbone=dict(
        embed_dims=128,
        depths=[2, 2, 18, 2],
        num_heads=[4, 8, 16, 32],
        window_size=7,
        init_cfg=dict(
            checkpoint='./simmim_pretrain__swin_base__img192_window6__800ep'
            '.pth')),
    neck=dict(in_channels=[128, 256, 512, 1024]))
