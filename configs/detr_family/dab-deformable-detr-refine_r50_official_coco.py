# IDEA-Research/DAB-DETR DAB-Deformable-DETR (-m dab_deformable_detr) weights
# converted with tools/model_converters/detr_family2mmdet.py into the closest
# MMDetection model whose layouts match, as for DN-Deformable-DETR (of which
# DAB-Deformable-DETR is the base): DeformableDETR with box refinement, neck
# bias=True, FFNs of 2048 channels. NOT carried (no MMDetection equivalent):
# tgt_embed, refpoint_embed, decoder ref_point_head and query_scale;
# query_embedding and reference_points_fc keep their initialisation, so
# fine-tune before evaluating.
_base_ = './dn-deformable-detr-refine_r50_official_coco.py'
