# Copyright (c) mmconv contributors. All rights reserved.
"""``python -m mmconv`` = the ``mmconv`` command."""
import sys

from .cli import main

sys.exit(main())
