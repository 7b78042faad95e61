# Copyright (c) mmconv contributors. All rights reserved.
"""Write a tiny COCO-format instance-segmentation dataset to disk.

Real JPEG images with drawn objects, polygon masks and the 80 COCO category
names and ids, laid out as MMDetection's ``coco_instance.py`` expects::

    OUT/annotations/instances_{train,val}2017.json
    OUT/{train,val}2017/*.jpg

Usage::

    python tools/make_tiny_coco.py OUT [--images 4] [--size 160 128]

Then run any config on it with
``--cfg-options train_dataloader.dataset.data_root=OUT/ ...`` (see
``tests/test_configs.py``).
"""
import argparse
import json
import math
import os
from typing import Dict, List

import cv2
import numpy as np

# The 80 COCO classes: official category ids and names (COCO 2017).
COCO_IDS = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
    23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43,
    44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62,
    63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85,
    86, 87, 88, 89, 90
]
COCO_NAMES = [
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train',
    'truck', 'boat', 'traffic light', 'fire hydrant', 'stop sign',
    'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep', 'cow',
    'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella', 'handbag',
    'tie', 'suitcase', 'frisbee', 'skis', 'snowboard', 'sports ball', 'kite',
    'baseball bat', 'baseball glove', 'skateboard', 'surfboard',
    'tennis racket', 'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon',
    'bowl', 'banana', 'apple', 'sandwich', 'orange', 'broccoli', 'carrot',
    'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch', 'potted plant',
    'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote',
    'keyboard', 'cell phone', 'microwave', 'oven', 'toaster', 'sink',
    'refrigerator', 'book', 'clock', 'vase', 'scissors', 'teddy bear',
    'hair drier', 'toothbrush'
]


def _polygon(rng: np.random.RandomState, w: int, h: int) -> np.ndarray:
    """A random convex-ish polygon (star-shaped around a centre)."""
    cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
    radius = rng.uniform(0.12, 0.25) * min(w, h)
    n = rng.randint(5, 9)
    angles = np.sort(rng.uniform(0, 2 * math.pi, n))
    radii = radius * rng.uniform(0.7, 1.0, n)
    pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)],
                   axis=1)
    pts[:, 0] = pts[:, 0].clip(0, w - 1)
    pts[:, 1] = pts[:, 1].clip(0, h - 1)
    return pts


def make_split(out: str, split: str, num_images: int, size: tuple,
               seed: int) -> Dict:
    """Write one split's images and return its COCO annotation dict."""
    rng = np.random.RandomState(seed)
    w, h = size
    os.makedirs(os.path.join(out, f'{split}2017'), exist_ok=True)
    images: List[Dict] = []
    annotations: List[Dict] = []
    for i in range(num_images):
        img = (rng.rand(h, w, 3) * 60 + 90).astype(np.uint8)
        file_name = f'{i:012d}.jpg'
        for _ in range(rng.randint(1, 4)):
            pts = _polygon(rng, w, h)
            color = tuple(int(c) for c in rng.randint(0, 255, 3))
            cv2.fillPoly(img, [pts.round().astype(np.int32)], color)
            x0, y0 = pts.min(0)
            x1, y1 = pts.max(0)
            xs, ys = pts[:, 0], pts[:, 1]
            area = 0.5 * abs(np.dot(xs, np.roll(ys, 1)) -
                             np.dot(ys, np.roll(xs, 1)))
            cat = int(COCO_IDS[rng.randint(len(COCO_IDS))])
            annotations.append(dict(
                id=len(annotations) + 1, image_id=i + 1, category_id=cat,
                segmentation=[pts.flatten().round(2).tolist()],
                area=float(area), iscrowd=0,
                bbox=[float(x0), float(y0), float(x1 - x0),
                      float(y1 - y0)]))
        cv2.imwrite(os.path.join(out, f'{split}2017', file_name), img)
        images.append(dict(id=i + 1, file_name=file_name, width=w, height=h))
    return dict(images=images, annotations=annotations,
                categories=[dict(id=c, name=n, supercategory='object')
                            for c, n in zip(COCO_IDS, COCO_NAMES)])


def main(argv=None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('out', help='output directory')
    parser.add_argument('--images', type=int, default=4,
                        help='images per split (default 4)')
    parser.add_argument('--size', type=int, nargs=2, default=(160, 128),
                        metavar=('W', 'H'), help='image size (160 128)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    os.makedirs(os.path.join(args.out, 'annotations'), exist_ok=True)
    for k, split in enumerate(('train', 'val')):
        ann = make_split(args.out, split, args.images, tuple(args.size),
                         args.seed + k)
        with open(os.path.join(args.out, 'annotations',
                               f'instances_{split}2017.json'), 'w') as f:
            json.dump(ann, f)
    print(f'tiny COCO dataset written to {args.out}')


if __name__ == '__main__':
    main()
