# ViTDet Mask R-CNN (the recipe of ../vitdet/mask-rcnn_vit-b-mae-selfsup-raw-
# pre_simple-fpn_lsj-100e_coco.py: simple feature pyramid, 1024 px LSJ, 100
# epochs, AdamW with layer-wise lr decay 0.7) with a DINOv3 ViT-B/16 backbone
# from the raw official file dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth
# (or the eval teacher_checkpoint.pth, a training checkpoint directory, a
# transformers DINOv3ViTModel folder or a timm file) through mmconv.
# The backbone computes DINOv3's function: 2-D RoPE on the patch tokens (no
# position embedding; the file's rope_embed.periods are loaded), the class
# token and the 4 storage (register) tokens inside attention, LayerScale,
# LayerNorm eps 1e-5, and the final norm on the output map (the official
# get_intermediate_layers(norm=True)). The ViTDet mode changes it: windowed
# attention (14x14 windows) in every block but the global ones (2, 5, 8, 11,
# also the layers the official detector reads) and zero-initialised relative
# position tables in attention, which no pre-trained file has. The global
# blocks are the layers of the official DINOv3 detector
# (dinov3/hub/detectors.py: m * n_blocks // 4 - 1).
# Target: the DINOv3 paper reports no Mask R-CNN result for ViT-B (README).
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
_base_ = ('../vitdet/mask-rcnn_vit-b-mae-selfsup-raw-pre_'
          'simple-fpn_lsj-100e_coco.py')

image_size = (1024, 1024)

model = dict(
    backbone=dict(
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        mlp_ratio=4.0,
        mlp='mlp',
        qkv_bias=True,
        layer_scale=1e-5,  # LayerScale is carried: any value, the file's
        norm_cfg=dict(type='LN', eps=1e-5),
        use_abs_pos=False,
        use_rope=True,
        rope_base=100.0,
        with_cls_token=True,
        num_reg_tokens=4,
        final_norm=True,
        drop_path_rate=0.1,
        window_size=14,
        global_attn_indexes=(2, 5, 8, 11),
        use_rel_pos=True,
        rel_pos_img_size=image_size,
        init_cfg=dict(
            type='SelfSupPretrained',
            checkpoint='./dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth',
            method='auto')),
    neck=dict(backbone_channel=768))

optim_wrapper = dict(
    paramwise_cfg=dict(
        custom_keys={
            'cls_token': dict(decay_mult=0.),
            'reg_token': dict(decay_mult=0.),
        }))
