"""A minimal progress bar on stderr that only appears on a terminal, for runs longer than a few seconds."""

from __future__ import annotations

import sys
import time
from typing import TextIO

#: Seconds before the bar is first drawn; shorter runs print nothing.
DELAY = 2.0
WIDTH = 30


class Progress:
    """Counts steps out of ``total`` and redraws one line on ``stream``.

    Args:
        total: number of steps expected.
        label: text after the bar.
        stream: where to draw (stderr by default, so stdout stays parseable).
        delay: seconds before the first draw.
        enabled: whether to draw at all; by default only when ``stream`` is a
            terminal, so logs and pipes get no carriage-return noise.

    Example:
        >>> bar = Progress(10, "sweep")
        >>> for _ in range(10):
        ...     bar.advance()
        >>> bar.close()
    """

    def __init__(self, total: int, label: str = "", stream: TextIO | None = None, delay: float = DELAY,
                 enabled: bool | None = None) -> None:
        self.total = max(1, total)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.delay = delay
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self.done = 0
        self.start = time.perf_counter()
        self.width = 0  # length of the last line drawn, to blank it out when redrawing

    def advance(self, steps: int = 1, label: str | None = None) -> None:
        """Count ``steps`` more steps (optionally changing the label) and redraw."""
        self.done = min(self.total, self.done + steps)
        if label is not None:
            self.label = label
        elapsed = time.perf_counter() - self.start
        if self.enabled and elapsed >= self.delay:
            filled = WIDTH * self.done // self.total
            bar = "#" * filled + "." * (WIDTH - filled)
            line = f"[{bar}] {self.done}/{self.total} {elapsed:6.1f} s  {self.label}"
            self.stream.write("\r" + line.ljust(self.width))
            self.stream.flush()
            self.width = len(line)

    def close(self) -> None:
        """End the bar's line (only if it was drawn)."""
        if self.width:
            self.stream.write("\n")
            self.stream.flush()
