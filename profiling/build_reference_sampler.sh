#!/usr/bin/env bash
# Build and install the real C++ `spatial_correlation_sampler` 0.5.0, CPU
# variant, into the currently active python (`python -m pip ...`).
#
# Why a script: the package registry ships 0.5.0 only as a source archive
# whose setup.py always builds a CUDA extension, so a plain `pip install` on a
# CPU-only machine fails ("CUDA_HOME environment variable is not set"). This
# script:
#   1. fetches the source with `python -m pip download --no-binary :all:`
#      (pip cannot prepare its metadata without CUDA, so the download "fails";
#      `--no-clean` keeps the unpacked source tree, which is all we need);
#   2. flips the hard-coded `CPU_ONLY = False` switch in setup.py to True;
#   3. provides an empty stand-in for <c10/cuda/CUDAGuard.h> (still included
#      unconditionally by correlation_sampler.cpp) in a temporary include dir,
#      passed through CPPFLAGS (setting CFLAGS instead would drop -O3);
#   4. builds without build isolation against the installed torch;
#   5. checks that the import works and that forward and backward agree with
#      a direct evaluation of the definition on a small case.
#
# Usage:  bash profiling/build_reference_sampler.sh [--force]
#   PYTHON=/path/to/python  python to install into (default: `python` on PATH)
#   --force / SCS_FORCE=1   rebuild even if a working 0.5.0 is already installed
# Needs: torch (CPU build is fine), a C++17 compiler; about a minute on 2 cores.
# Idempotent: re-running skips the build when a working copy is installed,
# and otherwise reinstalls over any existing copy.

set -euo pipefail

VERSION=0.5.0
PY="${PYTHON:-python}"
FORCE="${SCS_FORCE:-0}"
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "build_reference_sampler: unknown argument '$arg' (expected --force)" >&2; exit 2 ;;
    esac
done

die() {
    echo "build_reference_sampler: ERROR: $*" >&2
    exit 1
}

# The check run after the build (and to decide whether a build is needed):
# import, version, and forward/backward against the definition on a tiny case.
VERIFY_PY='
import sys, importlib.metadata as md
import torch
from spatial_correlation_sampler import spatial_correlation_sample
ver = md.version("spatial_correlation_sampler")
assert ver == sys.argv[1], f"installed version {ver}, expected {sys.argv[1]}"
g = torch.Generator().manual_seed(0)
x1 = torch.randn(2, 3, 5, 6, dtype=torch.float64, generator=g, requires_grad=True)
x2 = torch.randn(2, 3, 5, 6, dtype=torch.float64, generator=g, requires_grad=True)
k, P, s, p, d, dp = (2, 3), (3, 4), (1, 2), (1, 0), (1, 2), (2, 1)
out = spatial_correlation_sample(x1, x2, k, P, s, p, d, dp)
B, C, H, W = x1.shape
oH = (H + 2 * p[0] - ((k[0] - 1) * d[0] + 1)) // s[0] + 1
oW = (W + 2 * p[1] - ((k[1] - 1) * d[1] + 1)) // s[1] + 1
assert out.shape == (B, P[0], P[1], oH, oW), tuple(out.shape)
ref = torch.zeros(B, P[0], P[1], oH, oW, dtype=torch.float64)
a, b = x1.detach(), x2.detach()
for ph in range(P[0]):
    dy = (ph - (P[0] - 1) // 2) * dp[0]
    for pw in range(P[1]):
        dx = (pw - (P[1] - 1) // 2) * dp[1]
        for h in range(oH):
            for w in range(oW):
                for i in range(k[0]):
                    for j in range(k[1]):
                        y = h * s[0] - p[0] + i * d[0]
                        x = w * s[1] - p[1] + j * d[1]
                        if 0 <= y < H and 0 <= x < W and 0 <= y + dy < H and 0 <= x + dx < W:
                            ref[:, ph, pw, h, w] += (a[:, :, y, x] * b[:, :, y + dy, x + dx]).sum(1)
err = (out.detach() - ref).abs().max().item()
assert err < 1e-12, f"forward differs from the definition by {err}"
out.sum().backward()
assert x1.grad is not None and x2.grad is not None, "no gradient"
assert torch.isfinite(x1.grad).all() and torch.isfinite(x2.grad).all()
print(f"spatial_correlation_sampler {ver} OK (torch {torch.__version__}, forward max err {err:.1e}, backward ran)")
'

verify() {
    # Run from / so a source tree in the current directory cannot shadow the install.
    (cd / && "$PY" -c "$VERIFY_PY" "$VERSION")
}

command -v "$PY" >/dev/null 2>&1 || die "python '$PY' not found (set PYTHON=...)"
"$PY" -c 'import torch' >/dev/null 2>&1 \
    || die "torch is not importable from '$PY'; install torch first (the extension builds against it)"

if [[ "$FORCE" != 1 ]] && existing="$(verify 2>/dev/null)"; then
    echo "$existing"
    echo "build_reference_sampler: already installed and working for $PY; nothing to do (use --force to rebuild)."
    exit 0
fi

CXX_BIN="${CXX:-c++}"
command -v "$CXX_BIN" >/dev/null 2>&1 || die "no C++ compiler ('$CXX_BIN') found; install g++ (Debian: apt-get install g++)"

START=$(date +%s)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/scs-build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/tmp" "$WORK/dl" "$WORK/include/c10/cuda"

# 1. Fetch the source. Metadata preparation is expected to fail on a machine
#    without CUDA; the unpacked tree survives thanks to --no-clean.
echo "build_reference_sampler: fetching spatial_correlation_sampler==$VERSION source ..."
set +e
TMPDIR="$WORK/tmp" "$PY" -m pip download --no-deps --no-binary :all: --no-build-isolation \
    --no-clean --disable-pip-version-check -d "$WORK/dl" \
    "spatial_correlation_sampler==$VERSION" >"$WORK/download.log" 2>&1
set -e
SRC=""
archive="$(find "$WORK/dl" -maxdepth 1 -name "spatial*correlation*sampler-$VERSION.tar.gz" -print -quit)"
if [[ -n "$archive" ]]; then
    mkdir -p "$WORK/src" && tar -xzf "$archive" -C "$WORK/src"
    SRC="$(dirname "$(find "$WORK/src" -maxdepth 2 -name setup.py -print -quit)")"
else
    setup="$(find "$WORK/tmp" -maxdepth 3 -path '*pip-download-*' -name setup.py -print -quit)"
    [[ -n "$setup" ]] && SRC="$(dirname "$setup")"
fi
if [[ -z "$SRC" || ! -f "$SRC/setup.py" || ! -d "$SRC/Correlation_Module" ]]; then
    echo "---- pip download log ----" >&2
    tail -n 40 "$WORK/download.log" >&2
    die "could not obtain the spatial_correlation_sampler==$VERSION source (see the pip log above)"
fi
grep -q "version=\"$VERSION\"" "$SRC/setup.py" || die "downloaded setup.py is not version $VERSION"

# 2. CPU_ONLY switch.
grep -q '^CPU_ONLY = False' "$SRC/setup.py" \
    || die "setup.py has no 'CPU_ONLY = False' line to switch; the source layout changed"
sed -i 's/^CPU_ONLY = False/CPU_ONLY = True/' "$SRC/setup.py"
grep -q '^CPU_ONLY = True' "$SRC/setup.py" || die "failed to set CPU_ONLY = True in setup.py"
# Stale egg-info from pip's failed metadata step would only confuse setuptools.
rm -rf "$SRC"/Correlation_Module/*.egg-info "$SRC"/*.egg-info

# 3. Empty stand-in for the CUDA guard header (only used under USE_CUDA).
printf '%s\n' '#pragma once' '// empty stand-in: CPU-only build of spatial_correlation_sampler' \
    >"$WORK/include/c10/cuda/CUDAGuard.h"

# 4. Build and install against the installed torch.
echo "build_reference_sampler: building CPU extension (about a minute) ..."
if ! (cd "$SRC" && \
      CPPFLAGS="-I$WORK/include ${CPPFLAGS:-}" MAX_JOBS="${MAX_JOBS:-$(nproc 2>/dev/null || echo 2)}" \
      "$PY" -m pip install --no-deps --no-build-isolation --force-reinstall --no-cache-dir \
          --disable-pip-version-check -v . >"$WORK/build.log" 2>&1); then
    echo "---- build log (last 60 lines) ----" >&2
    tail -n 60 "$WORK/build.log" >&2
    die "building/installing spatial_correlation_sampler $VERSION failed (see the log above)"
fi

# 5. Check.
if ! verify; then
    die "spatial_correlation_sampler $VERSION was installed but does not import or compute correctly"
fi
echo "build_reference_sampler: done in $(( $(date +%s) - START )) s."
