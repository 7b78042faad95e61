# Mask R-CNN Swin V2-T FPN 1x: MMDetection's Swin recipe with mmpretrain's
# SwinTransformerV2 (window 8, as pre-trained) initialised from the raw
# official microsoft/Swin-Transformer V2 file through mmconv (timm's
# swinv2_* layout works too). For another window set window_size and
# pretrained_window_sizes=[8, 8, 8, 8] (mmpretrain rebuilds the continuous
# position bias inputs from both). Point checkpoint= at another file with
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
_base_ = './mask-rcnn_swin-t-p4-w7-official-raw-pre_fpn_1x_coco.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmpretrain.SwinTransformerV2',
        arch=dict(
            embed_dims=96,
            depths=[2, 2, 6, 2],
            num_heads=[3, 6, 12, 24],
            extra_norm_every_n_blocks=0),
        img_size=256,
        window_size=8,
        pretrained_window_sizes=[0, 0, 0, 0],
        # detection inputs: pad feature maps smaller than a window (and
        # shift a single window), as MMDetection's SwinTransformer does
        pad_small_map=True,
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(
            type='SelfSupPretrained',
            checkpoint='https://github.com/SwinTransformer/storage/releases/'
            'download/v2.0.0/swinv2_tiny_patch4_window8_256.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
