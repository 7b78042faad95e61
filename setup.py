# Copyright (c) mmconv contributors. All rights reserved.
"""Packaging for mmconv."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r"__version__ = '([^']+)'",
                    (HERE / 'mmconv' / 'version.py').read_text()).group(1)

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
    install_requires=['torch>=2.6', 'numpy', 'mmengine>=0.10'],
    extras_require={
        'tests': ['pytest', 'hypothesis', 'safetensors', 'mmdet==3.3.0',
                  'mmpretrain==1.2.0'],
    },
    entry_points={'console_scripts': ['mmconv=mmconv.cli:main']},
    license='Apache-2.0',
)
