# Copyright (c) mmconv contributors. All rights reserved.
"""The key set of MMDetection's (= torchvision's) ResNet backbones.

Used to tell, without building a model, whether a converted state dict is a
complete ResNet backbone.
"""
import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Set, Tuple

__all__ = ['RESNET_ARCH', 'resnet_keys', 'check_resnet', 'ResNetCheck']

#: depth -> (block type, blocks per stage), as in ``mmdet.models.ResNet``.
RESNET_ARCH: Dict[int, Tuple[str, Tuple[int, int, int, int]]] = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
}
_BN = ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')


def resnet_keys(depth: int) -> List[str]:
    """All state-dict keys of an MMDetection ``ResNet(depth)`` backbone.

    Args:
        depth (int): 18, 34, 50, 101 or 152.

    Returns:
        list[str]: Keys in module order.
    """
    block, stages = RESNET_ARCH[depth]
    convs = 2 if block == 'basic' else 3
    keys = ['conv1.weight'] + [f'bn1.{p}' for p in _BN]
    for stage, num_blocks in enumerate(stages, 1):
        for b in range(num_blocks):
            prefix = f'layer{stage}.{b}.'
            for i in range(1, convs + 1):
                keys.append(f'{prefix}conv{i}.weight')
                keys += [f'{prefix}bn{i}.{p}' for p in _BN]
            if b == 0 and (stage > 1 or block == 'bottleneck'):
                keys.append(f'{prefix}downsample.0.weight')
                keys += [f'{prefix}downsample.1.{p}' for p in _BN]
    return keys


@dataclass
class ResNetCheck:
    """How a state dict compares with a ResNet backbone.

    Attributes:
        depth (int | None): The depth the keys describe, ``None`` if none.
        missing (list[str]): Expected keys that are absent.
        unexpected (list[str]): Keys a ResNet backbone does not have.
    """

    depth: Optional[int]
    missing: List[str]
    unexpected: List[str]

    @property
    def complete(self) -> bool:
        """Whether every expected key is there and nothing else."""
        return self.depth is not None and not self.missing \
            and not self.unexpected

    def describe(self) -> str:
        """One line for reports."""
        if self.depth is None:
            return 'not a ResNet backbone (depth could not be inferred)'
        if self.complete:
            return f'complete ResNet-{self.depth} backbone'
        parts = []
        if self.missing:
            parts.append(f'{len(self.missing)} missing (first: '
                         f'{", ".join(self.missing[:3])})')
        if self.unexpected:
            parts.append(f'{len(self.unexpected)} unexpected (first: '
                         f'{", ".join(self.unexpected[:3])})')
        return f'INCOMPLETE ResNet-{self.depth} backbone: ' + '; '.join(parts)


def check_resnet(keys: Iterable[str]) -> ResNetCheck:
    """Infer the ResNet depth of ``keys`` and list what differs.

    ``num_batches_tracked`` buffers are not required (checkpoints written
    before PyTorch 0.4.1 lack them and loading without them is harmless).

    Args:
        keys: State-dict keys in MMDetection ResNet naming.

    Returns:
        ResNetCheck: The comparison.
    """
    keys = list(keys)
    blocks: Dict[int, Set[int]] = {}
    bottleneck = False
    for k in keys:
        m = re.match(r'layer([1-4])\.(\d+)\.(\w+)', k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
            bottleneck |= m.group(3) == 'conv3'
    counts = tuple(len(blocks.get(s, ())) for s in (1, 2, 3, 4))
    kind = 'bottleneck' if bottleneck else 'basic'
    depth = next((d for d, arch in RESNET_ARCH.items()
                  if arch == (kind, counts)), None)
    if depth is None:
        return ResNetCheck(None, [], [])
    expected = resnet_keys(depth)
    have = set(keys)
    missing = [k for k in expected
               if k not in have and not k.endswith('num_batches_tracked')]
    expected_set = set(expected)
    unexpected = [k for k in keys if k not in expected_set]
    return ResNetCheck(depth, missing, unexpected)
