# Official IDEA-Research/DINO DINO-4scale R50 weights converted with
#   python tools/model_converters/detr_family2mmdet.py SRC DST
# MMDetection's config with one change: the official input_proj convs have a
# bias, so the GN ChannelMapper is built with bias=True (default 'auto' = no
# bias when a norm follows). Everything else (900 queries, 100 denoising
# queries, label noise 0.5, box noise 1.0 as scripts/DINO_train.sh passes,
# positional temperature 20, FFN 2048) already matches the official model.
_base_ = 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py'
custom_imports = dict(imports=['mmconv'], allow_failed_imports=False)
model = dict(neck=dict(bias=True))
load_from = None  # the converted checkpoint (or --cfg-options load_from=DST)
