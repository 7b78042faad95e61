# Official fundamentalvision/Deformable-DETR weights (--with_box_refine) converted with
#   python tools/model_converters/detr_family2mmdet.py SRC DST
# MMDetection's config with one change: the official input_proj convs have a
# bias, so the GN ChannelMapper is built with bias=True (default 'auto' = no
# bias when a norm follows). Then every converted tensor loads.
_base_ = 'mmdet::deformable_detr/deformable-detr-refine_r50_16xb2-50e_coco.py'
custom_imports = dict(imports=['mmconv'], allow_failed_imports=False)
model = dict(neck=dict(bias=True))
load_from = None  # the converted checkpoint (or --cfg-options load_from=DST)
