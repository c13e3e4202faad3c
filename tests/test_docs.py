"""Every Python block of README.md and docs/*.md runs.

The blocks of one file run in order in one namespace, as a reader would
type them (a later block may use an earlier block's names), each as its own
test named ``FILE:LINE``; a failure's traceback points at the line in the
document. A block that cannot run here is preceded by an HTML comment
``<!-- skip-test: REASON -->`` and is reported as skipped with that reason.
Blocks run in a temporary working directory, so files they write go there.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: An opening fence with its info string, a body, and the closing fence at the same indentation.
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.S | re.M)
SKIP = re.compile(r"<!--\s*skip-test:\s*(?P<reason>.+?)\s*-->\s*$")

#: Fence languages allowed in the docs: anything else (``py``, ``python3``...) would escape these tests.
KNOWN_LANGUAGES = {"python", "bash", "console", "text", "json", "toml", ""}


@dataclass(frozen=True)
class Block:
    """One ```python block: where it is, its code, and why it is skipped (``None``: it runs)."""

    path: Path
    line: int
    code: str
    skip: str | None

    @property
    def name(self) -> str:
        try:
            where = self.path.relative_to(ROOT)
        except ValueError:
            where = Path(self.path.name)
        return f"{where.as_posix()}:{self.line}"


def fences(text: str) -> list[re.Match[str]]:
    return list(FENCE.finditer(text))


def extract_blocks(path: Path) -> list[Block]:
    """The ```python blocks of a Markdown file, in order, with their skip reasons."""
    text = path.read_text(encoding="utf-8")
    blocks = []
    for match in fences(text):
        if match["info"].strip() != "python":
            continue
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        line = text.count("\n", 0, match.start()) + 2        # the block's first line, 1-based
        blocks.append(Block(path, line, textwrap.dedent(match["body"]), skip["reason"] if skip else None))
    return blocks


class DocumentRunner:
    """Runs a document's blocks in order in one namespace, remembering how far it got."""

    def __init__(self, blocks: list[Block]) -> None:
        self.blocks = blocks
        self.namespace: dict[str, Any] = {"__name__": "__doc_block__"}
        self.done = 0
        self.failed: str | None = None

    def run_through(self, index: int) -> None:
        """Run every block up to ``index`` not run yet (skipped ones excepted)."""
        while self.done <= index:
            block = self.blocks[self.done]
            if self.failed is not None:
                raise AssertionError(f"{block.name} not run: an earlier block of the file failed ({self.failed})")
            self.done += 1
            if block.skip is not None:
                continue
            # Padding with newlines makes the traceback's line numbers the document's.
            code = compile("\n" * (block.line - 1) + block.code, str(block.path), "exec")
            try:
                exec(code, self.namespace)
            except BaseException:
                self.failed = block.name
                raise


ALL_BLOCKS = [block for path in DOCUMENTS for block in extract_blocks(path)]
_RUNNERS: dict[Path, DocumentRunner] = {}


def _runner(path: Path) -> DocumentRunner:
    if path not in _RUNNERS:
        _RUNNERS[path] = DocumentRunner(extract_blocks(path))
    return _RUNNERS[path]


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[b.name for b in ALL_BLOCKS])
def test_block_runs(block: Block, tmp_path, monkeypatch):
    if block.skip is not None:
        pytest.skip(block.skip)
    monkeypatch.chdir(tmp_path)
    runner = _runner(block.path)
    runner.run_through(runner.blocks.index(block))


def test_blocks_found():
    """The extractor sees the documents' blocks (an empty list would make the test above vacuous)."""
    assert any(b.path.name == "README.md" for b in ALL_BLOCKS)
    assert len(ALL_BLOCKS) >= 8
    skipped = [b for b in ALL_BLOCKS if b.skip is not None]
    assert len(skipped) <= len(ALL_BLOCKS) // 4, [b.name for b in skipped]   # keep the skips few


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_fence_languages_are_known(path: Path):
    """A block labelled ``py`` or ``python3`` would not be run: only known labels are allowed."""
    unknown = [(m["info"], path.read_text()[: m.start()].count("\n") + 1)
               for m in fences(path.read_text()) if m["info"].strip() not in KNOWN_LANGUAGES]
    assert not unknown, f"fences with unknown languages (use python, bash, text...): {unknown}"


# --------------------------------------------------------------------------- the runner itself can fail


BROKEN = """\
# A document

```python
value = 40
```

Some text.

<!-- skip-test: needs CUDA -->
```python
import torch
torch.zeros(1, device="cuda")
```

- a list item:

  ```python
  value += 2
  assert value == 42
  ```

```python
assert value == 41, "deliberately broken"
```
"""


def test_a_broken_block_is_detected(tmp_path):
    doc = tmp_path / "broken.md"
    doc.write_text(BROKEN)
    blocks = extract_blocks(doc)
    assert [b.line for b in blocks] == [4, 11, 18, 23]
    assert [b.skip for b in blocks] == [None, "needs CUDA", None, None]
    assert blocks[2].code == "value += 2\nassert value == 42\n"     # an indented block is dedented
    runner = DocumentRunner(blocks)
    runner.run_through(2)                                            # state carries over, the skip is skipped
    assert runner.namespace["value"] == 42
    with pytest.raises(AssertionError, match="deliberately broken") as info:
        runner.run_through(3)
    frame = info.traceback[-1]
    assert Path(str(frame.path)).name == "broken.md" and frame.lineno + 1 == 23   # points into the document
    assert runner.failed == "broken.md:23"


def test_a_block_after_a_failure_is_reported(tmp_path):
    doc = tmp_path / "two.md"
    doc.write_text("```python\nraise ValueError('first')\n```\n\n```python\nx = 1\n```\n")
    runner = DocumentRunner(extract_blocks(doc))
    with pytest.raises(ValueError, match="first"):
        runner.run_through(0)
    with pytest.raises(AssertionError, match="earlier block of the file failed"):
        runner.run_through(1)
