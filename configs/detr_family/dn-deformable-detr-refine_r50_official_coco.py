# IDEA-Research/DN-DETR DN-Deformable-DETR (-m dn_dab_deformable_detr) weights
# converted with tools/model_converters/detr_family2mmdet.py into the closest
# MMDetection model whose layouts match: DeformableDETR with box refinement,
# neck bias=True (official input_proj convs have a bias) and FFNs of 2048
# channels (DN-DETR's default dim_feedforward). NOT carried (no MMDetection
# equivalent): label_enc, tgt_embed, refpoint_embed, decoder ref_point_head
# and query_scale; query_embedding and reference_points_fc keep their
# initialisation, so fine-tune before evaluating.
_base_ = 'mmdet::deformable_detr/deformable-detr-refine_r50_16xb2-50e_coco.py'
custom_imports = dict(imports=['mmconv'], allow_failed_imports=False)
model = dict(
    neck=dict(bias=True),
    encoder=dict(layer_cfg=dict(ffn_cfg=dict(feedforward_channels=2048))),
    decoder=dict(layer_cfg=dict(ffn_cfg=dict(feedforward_channels=2048))))
load_from = None  # the converted checkpoint (or --cfg-options load_from=DST)
