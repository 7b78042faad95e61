# Copyright (c) mmconv contributors. All rights reserved.
"""Official DETR-family checkpoint -> MMDetection 3.x detector checkpoint.

::

    python tools/model_converters/detr_family2mmdet.py \
        detr-r50-e632da11.pth detr_r50_mmdet.pth          # --from auto

``--from`` takes detr (facebookresearch/detr), deformable_detr
(fundamentalvision/Deformable-DETR: plain, --with_box_refine, --two_stage),
conditional_detr (Atten4Vis/ConditionalDETR), dn_deformable_detr
(IDEA-Research/DN-DETR, partial: see the report), dino_4scale and
dino_5scale (IDEA-Research/DINO), dab_detr and dab_deformable_detr
(IDEA-Research/DAB-DETR; the deformable one partial) and defaults to
``auto``. The report names the config to build and ends with the
``mim test mmdet CONFIG --checkpoint DST`` line; load the output with
``load_from='DST'``. Deformable DETR family and DINO: use
``configs/detr_family/*_official_coco.py`` (neck ``bias=True``).
"""
import sys

from mmconv.cli import preset_main

if __name__ == '__main__':
    sys.exit(preset_main('detr_family2mmdet'))
