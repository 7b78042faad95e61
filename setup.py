# Copyright (c) mmconv contributors. All rights reserved.
"""Packaging for mmconv."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r"__version__ = '([^']+)'",
                    (HERE / 'mmconv' / 'version.py').read_text()).group(1)


def requirements(name: str) -> list:
    """Requirement lines of ``requirements/<name>.txt``."""
    path = HERE / 'requirements' / f'{name}.txt'
    return [line.strip() for line in path.read_text().splitlines()
            if line.strip() and not line.startswith('#')]


# Ranges, not pins, and no MMEngine: installing mmconv into an existing
# MMDetection environment (torch 2.0/2.1 with a prebuilt mmcv) must change
# nothing. MMEngine ships under two distribution names, `mmengine` (OpenMMLab)
# and `onedl-mmengine` (the maintained fork, same `mmengine` module); a hard
# requirement on either would install it over the other. mmconv checks the
# module itself when imported (mmconv.stack); the extras install one.
# torch < 2.6 is read through mmconv's own restricted reader (mmconv.torchzip).

setup(
    name='mmconv',
    version=VERSION,
    description='Checkpoint conversion toolkit for MMDetection: '
    'self-supervised, torchvision, detectron2 and DETR-family weights.',
    long_description=(HERE / 'README.md').read_text(encoding='utf-8')
    if (HERE / 'README.md').exists() else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmconv', 'mmconv.*']),
    include_package_data=True,
    python_requires='>=3.8',
    install_requires=['torch>=2.0', 'numpy'],
    extras_require={
        'openmmlab': ['mmengine>=0.10'],
        'onedl': ['onedl-mmengine>=0.10'],
        'safetensors': ['safetensors'],
        # hf://ORG/NAME sources (Hugging Face Hub, through its cache)
        'hf': ['huggingface_hub', 'safetensors'],
        'tests': requirements('tests'),
        'reference': requirements('reference'),
    },
    entry_points={'console_scripts': ['mmconv=mmconv.cli:main']},
    license='Apache-2.0',
)
