"""Print the machine's description as JSON, to save next to benchmark results.

The description itself is :func:`tiledcorr.tools.machine.describe_machine` (the
``tiledcorr profile --json`` and ``sweep --json`` commands embed the same
dict); it lives in the package because the installed command needs it, and
this script re-exports it for the scripts in ``profiling/``.

Usage::

    python profiling/machine.py > results/machine.json
"""

from __future__ import annotations

import json

from tiledcorr.tools.machine import describe_machine

__all__ = ["describe_machine"]

if __name__ == "__main__":
    print(json.dumps(describe_machine(), indent=2))
