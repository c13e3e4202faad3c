"""``python -m tiledcorr``: the same as the ``tiledcorr`` command."""

import sys

from .tools.cli import main

sys.exit(main())
