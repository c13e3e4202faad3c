"""``tiledcorr.compat.install()``: third-party code's ``import spatial_correlation_sampler`` gets tiledcorr's.

Each case runs in a fresh Python process (an import hook is process state),
with ptlflow-style code: a module, imported after ``install()``, whose
function does ``from spatial_correlation_sampler import SpatialCorrelationSampler``
(with ptlflow's fallback on ``ModuleNotFoundError``). A stand-in "real"
package on ``PYTHONPATH`` plays the installed original, so the cases where it
is installed do not need the C++ build.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tiledcorr

ROOT = Path(tiledcorr.__file__).resolve().parents[1]

#: A model file as ptlflow and MM-Tracker write it: the import runs when the function does.
MODEL = '''
import torch

def build(patch_size):
    try:
        from spatial_correlation_sampler import SpatialCorrelationSampler
    except ModuleNotFoundError:
        SpatialCorrelationSampler = None
    return SpatialCorrelationSampler(kernel_size=1, patch_size=patch_size, stride=1, padding=0, dilation_patch=1)

def functional():
    from spatial_correlation_sampler.spatial_correlation_sampler import spatial_correlation_sample
    return spatial_correlation_sample
'''

#: A stand-in for the installed original: importing it is recorded.
FAKE_REAL = '''
IMPORTED = True
class SpatialCorrelationSampler:
    def __init__(self, *args, **kwargs):
        pass
def spatial_correlation_sample(*args, **kwargs):
    raise AssertionError("the real package was called")
'''


def _run(tmp_path: Path, script: str, *, fake_real: bool) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh interpreter with the model file (and the stand-in original) importable."""
    (tmp_path / "model_code.py").write_text(MODEL)
    paths = [str(ROOT), str(tmp_path)]
    if fake_real:
        package = tmp_path / "site" / "spatial_correlation_sampler"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(FAKE_REAL)
        paths.append(str(tmp_path / "site"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300)


CHECK_MODEL = """
    import torch, tiledcorr, tiledcorr.compat
    tiledcorr.compat.install()
    import model_code                                   # third-party code, imported after install()
    layer = model_code.build(patch_size=5)
    assert type(layer) is tiledcorr.SpatialCorrelationSampler, type(layer)
    x1, x2 = torch.randn(2, 3, 7, 9, dtype=torch.float64), torch.randn(2, 3, 7, 9, dtype=torch.float64)
    expected = tiledcorr.correlate(x1, x2, patch_size=5)
    assert torch.equal(layer(x1, x2), expected)
    assert model_code.functional() is tiledcorr.spatial_correlation_sample
    import spatial_correlation_sampler
    assert spatial_correlation_sampler.SpatialCorrelationSampler is tiledcorr.SpatialCorrelationSampler
    assert spatial_correlation_sampler.__spec__.origin == "tiledcorr.compat.sampler"
    assert tiledcorr.compat.install() is spatial_correlation_sampler   # a second call changes nothing
    print("OK", layer(x1, x2).shape)
"""


@pytest.mark.parametrize("fake_real", [False, True], ids=["original-absent", "original-installed"])
def test_install_redirects_third_party_imports(tmp_path, fake_real):
    """With or without the original installed (not imported), the model file gets tiledcorr's layer."""
    untouched = "    import sys; assert not hasattr(sys.modules['spatial_correlation_sampler'], 'IMPORTED')\n"
    result = _run(tmp_path, CHECK_MODEL + (untouched if fake_real else ""), fake_real=fake_real)
    assert result.returncode == 0, result.stderr
    assert "OK torch.Size([2, 5, 5, 7, 9])" in result.stdout


def test_without_install_the_import_is_untouched(tmp_path):
    """The check above can fail: without install() the stand-in original is what the model gets."""
    result = _run(tmp_path, """
        import tiledcorr, model_code
        import spatial_correlation_sampler
        assert spatial_correlation_sampler.IMPORTED
        assert model_code.build(5).__class__ is not tiledcorr.SpatialCorrelationSampler
        print("REAL")
    """, fake_real=True)
    assert result.returncode == 0, result.stderr
    assert "REAL" in result.stdout


def test_install_refuses_when_the_original_is_imported(tmp_path):
    result = _run(tmp_path, """
        import spatial_correlation_sampler                 # the original, imported first
        import tiledcorr.compat
        try:
            tiledcorr.compat.install()
        except tiledcorr.compat.SamplerAlreadyImportedError as exc:
            assert isinstance(exc, RuntimeError) and isinstance(exc, tiledcorr.TiledCorrError)
            print("REFUSED:", exc)
        else:
            raise AssertionError("install() accepted an already imported original")
        assert spatial_correlation_sampler.IMPORTED         # left as it was
    """, fake_real=True)
    assert result.returncode == 0, result.stderr
    assert "REFUSED: 'spatial_correlation_sampler' is already imported from" in result.stdout
    assert "must run before anything imports spatial_correlation_sampler" in result.stdout


def test_uninstall_restores_the_original(tmp_path):
    result = _run(tmp_path, """
        import tiledcorr, tiledcorr.compat
        tiledcorr.compat.install()
        from spatial_correlation_sampler import SpatialCorrelationSampler as Shim
        tiledcorr.compat.uninstall()
        assert not tiledcorr.compat.is_installed()
        import spatial_correlation_sampler
        assert spatial_correlation_sampler.IMPORTED and Shim is tiledcorr.SpatialCorrelationSampler
        print("RESTORED")
    """, fake_real=True)
    assert result.returncode == 0, result.stderr
    assert "RESTORED" in result.stdout
