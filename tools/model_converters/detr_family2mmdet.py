# Copyright (c) mmconv contributors. All rights reserved.
"""Official DETR-family checkpoint -> MMDetection 3.x detector checkpoint.

::

    python tools/model_converters/detr_family2mmdet.py \
        detr-r50-e632da11.pth detr_r50_mmdet.pth          # --from auto

``--from`` takes detr (facebookresearch/detr), deformable_detr
(fundamentalvision/Deformable-DETR: plain, --with_box_refine, --two_stage),
conditional_detr (Atten4Vis/ConditionalDETR), dn_deformable_detr
(IDEA-Research/DN-DETR, partial: see the report) and defaults to ``auto``.
The report names the config to build; load the output with
``load_from='DST'``. Deformable DETR family: use
``configs/detr_family/*_official_coco.py`` (neck ``bias=True``).
"""
import os
import sys

# A converter script builds no MMEngine objects: skip registering mmconv's
# initializer/hook with MMEngine (saves importing MMEngine at start-up).
os.environ['MMCONV_NO_MMENGINE_REGISTRY'] = '1'
from mmconv.detr_cli import main  # noqa: E402

del os.environ['MMCONV_NO_MMENGINE_REGISTRY']

if __name__ == '__main__':
    sys.exit(main())
