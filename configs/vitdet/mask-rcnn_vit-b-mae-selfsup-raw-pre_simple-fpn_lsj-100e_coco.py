# Mask R-CNN with a plain ViT-B/16 backbone and ViTDet's simple feature
# pyramid (Li et al., 2022, "Exploring Plain Vision Transformer Backbones for
# Object Detection"), initialised from the raw MAE file through mmconv:
# mae_pretrain_vit_base.pth (or an MAE training checkpoint) is converted in
# memory (class-token slot of pos_embed stripped, decoder dropped) and loaded
# into mmconv's ViTDet. Recipe: 1024x1024 large-scale jitter, LN in the
# pyramid and the heads (4conv1fc box head, LN mask head), drop path 0.1,
# AdamW lr 1e-4 wd 0.1, 100 epochs (25 x RepeatDataset(4)), batch 64.
# Layer-wise lr decay 0.7 over the backbone blocks (mmconv's
# ViTLayerDecayOptimizerConstructor, detectron2's get_vit_lr_decay_rate).
# Paper / detectron2 target: 51.6 box AP, 45.9 mask AP on COCO val.
# Mixed precision: add --amp to `mim train mmdet`. Point checkpoint= at your
# file:  --cfg-options model.backbone.init_cfg.checkpoint=PATH
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::common/lsj-100e_coco-instance.py'
]

custom_imports = dict(imports=['mmconv'], allow_failed_imports=False)

image_size = (1024, 1024)
norm_cfg = dict(type='LN2d', eps=1e-6, requires_grad=True)
embed_dim = 768
patch_size = 16
strides = [4, 8, 16, 32, 64]  # mmconv.models.simple_fpn_strides(16)

model = dict(
    data_preprocessor=dict(
        pad_size_divisor=32,
        batch_augments=[
            dict(type='BatchFixedSizePad', size=image_size, pad_mask=True)
        ]),
    backbone=dict(
        _delete_=True,
        type='ViTDet',
        img_size=224,  # pre-training grid; interpolated to the input
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=12,
        num_heads=12,
        mlp_ratio=4.0,
        qkv_bias=True,
        drop_path_rate=0.1,
        window_size=14,
        global_attn_indexes=(2, 5, 8, 11),
        use_rel_pos=True,
        rel_pos_img_size=image_size,
        final_norm=False,
        init_cfg=dict(
            type='SelfSupPretrained',
            checkpoint='./mae_pretrain_vit_base.pth',
            # every tensor must come from the file, but the relative
            # position tables, which no pre-trained ViT has (listed in the log)
            method='auto')),
    neck=dict(
        _delete_=True,
        type='SimpleFPN',
        backbone_channel=embed_dim,
        out_channels=256,
        num_outs=5,
        norm_cfg=norm_cfg),
    rpn_head=dict(
        num_convs=2, anchor_generator=dict(strides=strides)),
    roi_head=dict(
        bbox_roi_extractor=dict(featmap_strides=strides[:4]),
        bbox_head=dict(
            _delete_=True,
            type='Shared4Conv1FCBBoxHead',
            conv_out_channels=256,
            norm_cfg=norm_cfg,
            in_channels=256,
            fc_out_channels=1024,
            roi_feat_size=7,
            num_classes=80,
            bbox_coder=dict(
                type='DeltaXYWHBBoxCoder',
                target_means=[0., 0., 0., 0.],
                target_stds=[0.1, 0.1, 0.2, 0.2]),
            reg_class_agnostic=False,
            loss_cls=dict(
                type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
        mask_roi_extractor=dict(featmap_strides=strides[:4]),
        mask_head=dict(norm_cfg=norm_cfg)))

test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='Pad', size=image_size, pad_val=dict(img=(114, 114, 114))),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor'))
]
train_dataloader = dict(batch_size=4, num_workers=8)  # 16 GPUs x 4 = 64
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='ViTLayerDecayOptimizerConstructor',
    optimizer=dict(
        type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1),
    paramwise_cfg=dict(
        # lr x 0.7 ** (depth + 1 - layer_id); depth = len(backbone.blocks)
        decay_rate=0.7,
        norm_decay_mult=0.,
        bias_decay_mult=0.,
        custom_keys={
            'pos_embed': dict(decay_mult=0.),
            'rel_pos': dict(decay_mult=0.),
        }),
    clip_grad=None)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
         end=250),
    dict(type='MultiStepLR', begin=0, end=25, by_epoch=True,
         milestones=[22, 24], gamma=0.1)
]

custom_hooks = [dict(type='PretrainedLoadCheckHook')]
auto_scale_lr = dict(base_batch_size=64)
