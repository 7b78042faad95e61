# Official IDEA-Research/DINO DINO-5scale R50 weights converted with
#   python tools/model_converters/detr_family2mmdet.py SRC DST
# MMDetection ships 5-scale DINO only with Swin-L; this is its R50 4-scale
# config with the official 5-scale settings: ResNet stages C2-C5
# (return_interm_indices [0, 1, 2, 3]) plus one extra level, five levels in
# every deformable attention, and the neck built with bias=True (the official
# input_proj convs have a bias). Train with 1 image per GPU on 16 GPUs as the
# official script does (scripts/DINO_train_submitit_5scale.sh).
_base_ = 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py'
custom_imports = dict(imports=['mmconv'], allow_failed_imports=False)
num_levels = 5
model = dict(
    num_feature_levels=num_levels,
    backbone=dict(out_indices=(0, 1, 2, 3)),
    neck=dict(in_channels=[256, 512, 1024, 2048], num_outs=num_levels,
              bias=True),
    encoder=dict(layer_cfg=dict(self_attn_cfg=dict(num_levels=num_levels))),
    decoder=dict(layer_cfg=dict(cross_attn_cfg=dict(num_levels=num_levels))))
load_from = None  # the converted checkpoint (or --cfg-options load_from=DST)
