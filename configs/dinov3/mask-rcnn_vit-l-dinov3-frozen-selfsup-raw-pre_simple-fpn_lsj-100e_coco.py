# DINOv3 is made to be used frozen (the paper's COCO detector keeps its
# ViT-7B frozen). As the DINOv3 ViT-L config, with the backbone frozen
# (frozen=True: no parameter trains, the module stays in eval mode) and
# computing exactly the official function: every block global
# (window_size=0), no relative position tables, no drop path; its output is
# the official get_intermediate_layers(x, n=[23], reshape=True, norm=True)
# map, the last of the official detector's layers [5, 11, 17, 23]. Only the
# simple feature pyramid and the heads train (AdamW lr 1e-4, no layer
# decay: there are no trainable backbone layers).
# Target: the DINOv3 paper reports no Mask R-CNN result for ViT-L (README).
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
_base_ = './mask-rcnn_vit-l-dinov3-selfsup-raw-pre_simple-fpn_lsj-100e_coco.py'

model = dict(
    backbone=dict(
        frozen=True,
        drop_path_rate=0.0,
        window_size=0,
        global_attn_indexes=(),
        use_rel_pos=False,
        out_indices=(23, )))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1),
    paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.),
    clip_grad=None)
