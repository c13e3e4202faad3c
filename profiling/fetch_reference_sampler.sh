#!/usr/bin/env bash
# Fetch the source of the C++ `spatial_correlation_sampler` 0.5.0 into the
# git-ignored folder `.reference/`, so that a GPU machine without network can
# build its CUDA extension (`profiling/gpu_check.sh` does; carry `.reference`).
#
# Run this on a machine WITH network, from anywhere:
#     bash profiling/fetch_reference_sampler.sh [--force]
#
# Result: .reference/spatial_correlation_sampler-0.5.0.tar.gz (about 10 kB),
#         .reference/SHA256SUMS and .reference/SOURCE.txt (how it was obtained).
#
# How: `python -m pip download --no-deps --no-binary :all:` of the pinned
# version. pip fetches and unpacks the source archive, then prepares its
# metadata by running setup.py, which builds a CUDAExtension and so fails on a
# machine whose torch has no CUDA ("CUDA_HOME environment variable is not set")
# before pip saves the archive. `--no-clean` keeps pip's unpacked tree; this
# script packs that tree again, reproducibly (sorted names, fixed times and
# owners), as the archive. On a machine where pip succeeds, the archive pip
# saved is used as is. Either way the tree is checked: version 0.5.0 in
# setup.py and the CUDA kernel present.
#
#   PYTHON=/path/to/python   python whose pip to use (default: python3)
#   --force / FETCH_FORCE=1  fetch again even if the archive is there

set -euo pipefail

VERSION=0.5.0
NAME=spatial_correlation_sampler
PY="${PYTHON:-python3}"
FORCE="${FETCH_FORCE:-0}"
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "fetch_reference_sampler: unknown argument '$arg' (expected --force)" >&2; exit 2 ;;
    esac
done

die() {
    echo "fetch_reference_sampler: ERROR: $*" >&2
    exit 1
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/.reference"
ARCHIVE="$DEST/$NAME-$VERSION.tar.gz"

if [[ "$FORCE" != 1 && -f "$ARCHIVE" && -f "$DEST/SHA256SUMS" ]] && (cd "$DEST" && sha256sum --quiet -c SHA256SUMS); then
    echo "fetch_reference_sampler: $ARCHIVE is there and matches SHA256SUMS; nothing to do (use --force to fetch again)."
    exit 0
fi
command -v "$PY" >/dev/null 2>&1 || die "python '$PY' not found (set PYTHON=...)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/scs-fetch.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/tmp" "$WORK/dl" "$WORK/tree"

echo "fetch_reference_sampler: pip download $NAME==$VERSION (source) ..."
set +e
TMPDIR="$WORK/tmp" "$PY" -m pip download --no-deps --no-binary :all: --no-build-isolation --no-clean \
    --no-cache-dir --disable-pip-version-check -d "$WORK/dl" "$NAME==$VERSION" >"$WORK/download.log" 2>&1
pip_rc=$?
set -e

saved="$(find "$WORK/dl" -maxdepth 1 -name "spatial*correlation*sampler-$VERSION.tar.gz" -print -quit)"
if [[ -n "$saved" ]]; then
    how="the archive pip saved (pip download succeeded)"
    tar -xzf "$saved" -C "$WORK/tree"
else
    unpacked="$(find "$WORK/tmp" -maxdepth 3 -path '*pip-download-*' -name setup.py -print -quit)"
    if [[ -z "$unpacked" ]]; then
        echo "---- pip download log (pip exit status $pip_rc) ----" >&2
        tail -n 40 "$WORK/download.log" >&2
        die "pip did not fetch the $NAME==$VERSION source (see the log above)"
    fi
    how="pip's unpacked source tree, packed again (pip's metadata step fails without a CUDA torch, exit status $pip_rc)"
    mkdir -p "$WORK/tree/$NAME-$VERSION"
    cp -a "$(dirname "$unpacked")/." "$WORK/tree/$NAME-$VERSION/"
fi

SRC="$(dirname "$(find "$WORK/tree" -maxdepth 2 -name setup.py -print -quit)")"
grep -q "version=\"$VERSION\"" "$SRC/setup.py" || die "the fetched setup.py is not version $VERSION"
[[ -f "$SRC/Correlation_Module/correlation_cuda_kernel.cu" ]] || die "the fetched source has no CUDA kernel"
grep -q '^CPU_ONLY = False' "$SRC/setup.py" || die "setup.py has no 'CPU_ONLY = False' line; the layout changed"

mkdir -p "$DEST"
# The archive's top folder is always NAME-VERSION, whatever pip called its tree.
if [[ "$(basename "$SRC")" != "$NAME-$VERSION" ]]; then
    mv "$SRC" "$WORK/tree/$NAME-$VERSION"
fi
tar --sort=name --mtime='2000-01-01 00:00:00Z' --owner=0 --group=0 --numeric-owner \
    -C "$WORK/tree" -cf - "$NAME-$VERSION" | gzip -n -9 >"$ARCHIVE.tmp"
mv "$ARCHIVE.tmp" "$ARCHIVE"
(cd "$DEST" && sha256sum "$(basename "$ARCHIVE")" >SHA256SUMS)
{
    echo "$NAME $VERSION source, fetched $(date -u +%Y-%m-%dT%H:%M:%SZ) by profiling/fetch_reference_sampler.sh"
    echo "from: $how"
    echo "pip: $("$PY" -m pip --version 2>/dev/null)"
} >"$DEST/SOURCE.txt"
echo "fetch_reference_sampler: wrote $ARCHIVE ($(stat -c %s "$ARCHIVE") bytes)"
cat "$DEST/SHA256SUMS"
