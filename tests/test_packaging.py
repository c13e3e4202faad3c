"""Packaging: the wheel and the sdist ``python -m build`` makes, and the typing a user's code sees.

* The wheel holds every module of the source package, ``py.typed`` and the
  license, and its metadata carries the SPDX license, the single-sourced
  version and the extras.
* The sdist holds what its tests need (``conftest.py``, ``support.py``),
  the docs, the profiling scripts and the license, and its own tests pass
  when run from the unpacked sdist.
* ``mypy --strict`` accepts a user's file calling the public API
  (``tests/typing/user_file.py``) and rejects a wrong use of
  ``correlate_reduce``'s overloads.

Skipped where ``build`` or ``mypy`` (the dev extra) is not installed.
"""

from __future__ import annotations

import email
import importlib.util
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import tiledcorr

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tiledcorr"

#: Left out when copying the tree to build it (local artefacts, never part of a release).
_IGNORED = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".hypothesis", ".pytest_cache",
    ".mypy_cache", ".ruff_cache", "out", "demo_out", ".whl")


def _setuptools_is_recent() -> bool:
    try:
        from importlib.metadata import version
        return int(version("setuptools").split(".")[0]) >= 77
    except Exception:
        return False


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> tuple[Path, Path]:
    """``python -m build --no-isolation`` on a copy of the tree: ``(wheel, sdist)`` (the wheel built from the sdist)."""
    if importlib.util.find_spec("build") is None:
        pytest.skip("needs the 'build' package (pip install -e '.[dev]')")
    if not _setuptools_is_recent():
        pytest.skip("needs setuptools >= 77 in this environment (pip install -e '.[dev]')")
    work = tmp_path_factory.mktemp("build")
    source = work / "src"
    shutil.copytree(ROOT, source, ignore=_IGNORED)
    out = work / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    wheels, sdists = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    return wheels[0], sdists[0]


def _source_modules() -> set[str]:
    return {p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}


@pytest.mark.slow
def test_wheel_contents_and_metadata(dists):
    wheel, _ = dists
    version = tiledcorr.__version__
    assert wheel.name == f"tiledcorr-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = email.message_from_bytes(archive.read(f"tiledcorr-{version}.dist-info/METADATA"))
    missing = _source_modules() - names
    assert not missing, f"modules left out of the wheel (a folder without __init__.py?): {sorted(missing)}"
    assert "tiledcorr/py.typed" in names
    assert f"tiledcorr-{version}.dist-info/licenses/LICENSE" in names
    assert not any(n.startswith(("tests/", "docs/", "profiling/")) for n in names)
    assert metadata["Version"] == version
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    classifiers = metadata.get_all("Classifier")
    assert "Typing :: Typed" in classifiers and "Operating System :: OS Independent" in classifiers
    assert not any(c.startswith("License ::") for c in classifiers)   # SPDX expression instead
    assert {"plot", "triton", "dev"} <= set(metadata.get_all("Provides-Extra"))
    assert any(r.startswith("triton") and "extra == \"triton\"" in r for r in metadata.get_all("Requires-Dist"))


@pytest.mark.slow
def test_sdist_contents(dists):
    _, sdist = dists
    top = sdist.name[: -len(".tar.gz")]
    with tarfile.open(sdist) as archive:
        names = {n[len(top) + 1:] for n in archive.getnames() if n.startswith(top + "/")}
    expected = {
        "LICENSE", "README.md", "CHANGELOG.md", "CONTRIBUTING.md", "pyproject.toml", "MANIFEST.in",
        "tests/conftest.py", "tests/support.py", "tests/test_docs.py", "tests/typing/user_file.py",
        "docs/semantics.md", "docs/migration.md", "docs/performance.md",
        "profiling/build_reference_sampler.sh", "profiling/bench.py", "profiling/results/bench-cpu-float32.json",
        "tiledcorr/py.typed",
    }
    assert expected <= names, sorted(expected - names)
    assert {p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").glob("test_*.py")} <= names
    assert _source_modules() <= names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


@pytest.mark.slow
def test_sdist_tests_run(dists, tmp_path):
    """The unpacked sdist's own tests import (conftest, support) and pass, on the sdist's sources."""
    _, sdist = dists
    with tarfile.open(sdist) as archive:
        if hasattr(tarfile, "data_filter"):
            archive.extractall(tmp_path, filter="data")
        else:  # Python < 3.11.4: the archive is our own
            archive.extractall(tmp_path)
    unpacked = tmp_path / sdist.name[: -len(".tar.gz")]
    result = subprocess.run(
        # A few tests that need conftest.py (a fixture), support.py, the docs and a doctest: quick, not the suite.
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_mmcv.py", "tests/test_docs.py",
         "tiledcorr/compat/mmcv.py", "-k",
         "memory_budget or repr or blocks_found or fence or broken or mmcv_correlation"],
        cwd=unpacked, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed[1]) >= 10 and "failed" not in result.stdout, result.stdout[-2000:]
    assert str(unpacked / "tiledcorr") in subprocess.run(
        [sys.executable, "-c", "import tiledcorr; print(tiledcorr.__file__)"], cwd=unpacked,
        capture_output=True, text=True).stdout


#: A wrong use of the overloads: mypy must report both lines.
WRONG = '''
import torch
import tiledcorr
from tiledcorr import TopK

def f(x: torch.Tensor) -> TopK:
    return tiledcorr.correlate_reduce(x, x, patch_size=9, reduction="max")

def g(x: torch.Tensor) -> torch.Tensor:
    return tiledcorr.correlate_reduce(x, x, patch_size=9, reduction="topk", k=2)
'''


@pytest.mark.slow
def test_user_code_type_checks_strict(tmp_path):
    """``mypy --strict`` on a user's file: no error; a wrong use of the overloads: exactly its two errors.

    tiledcorr is analysed but its own findings are silenced (``--follow-imports=silent``), as for an
    installed package: only the user's code is judged, against tiledcorr's annotations.
    """
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("needs mypy (pip install -e '.[dev]')")
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\n")
    wrong = tmp_path / "wrong_use.py"
    wrong.write_text(WRONG)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--config-file", str(config),
         "--cache-dir", str(tmp_path / "cache"), "--no-error-summary", "--hide-error-context",
         str(ROOT / "tests" / "typing" / "user_file.py"), str(wrong)],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert not [line for line in lines if "user_file.py" in line], result.stdout
    assert len(lines) == 2, result.stdout + result.stderr
    assert 'got "Tensor", expected "TopK"' in lines[0] and 'got "TopK", expected "Tensor"' in lines[1]
