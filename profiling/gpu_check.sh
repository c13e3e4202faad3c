#!/usr/bin/env bash
# The one command for a lent GPU machine: build the C++ CUDA sampler from the
# carried archive (in the background) while profiling/gpu_check.py runs the
# CUDA tests and the correctness grid, then let gpu_check.py time, measure and
# write everything into $OUT.
#
# Usage (from the repository root, `.reference` carried; see profiling/README.md):
#     bash profiling/gpu_check.sh [gpu_check.py options, e.g. --time-limit 420]
#
#   OUT                   output folder (default: gpu_out/ in the repository)
#   PYTHON                python with a CUDA torch (default: python3)
#   SCS_ARCHIVE           the sampler's source archive
#                         (default: .reference/spatial_correlation_sampler-0.5.0.tar.gz,
#                         written by profiling/fetch_reference_sampler.sh)
#   TORCH_CUDA_ARCH_LIST  GPU architectures to build for (default 9.0: H100/H200)
#   MAX_JOBS              parallel compile jobs (default 16)
#   SAMPLER_VARIANT       cuda (default) or cpu: build the CPU variant instead, to
#                         try this script's build path on a machine without nvcc
#   CPU_SCALING_S         seconds for the CPU thread-scaling stage (default 90; 0: skip)
#
# Writes into $OUT: gpu-<device>.json and .md (gpu_check.py), gpu_check.log
# (its output), sampler-build.log, pytest-cuda.xml, bench-cpu-threads.json/.log
# (CPU thread scaling, CPU_SCALING_S seconds at most). tiledcorr is imported from
# this checkout through PYTHONPATH: nothing is installed, nothing downloaded.
# A failed build is recorded in the JSON (with the log's tail) and the run goes on.
# Exit status: gpu_check.py's.

set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
OUT="${OUT:-$ROOT/gpu_out}"
ARCHIVE="${SCS_ARCHIVE:-$ROOT/.reference/spatial_correlation_sampler-0.5.0.tar.gz}"
VARIANT="${SAMPLER_VARIANT:-cuda}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")"
SITE="$WORK/site"
STATUS="$WORK/sampler.status"
mkdir -p "$OUT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

# Build and install the sampler into $SITE; always ends by writing
# "<exit status> <seconds> <reason>" to $STATUS (atomically), which gpu_check.py waits for.
build_sampler() {
    local start=$SECONDS rc=0 reason=ok src
    finish() { echo "$1 $((SECONDS - start)) $2" >"$STATUS.tmp" && mv "$STATUS.tmp" "$STATUS"; }
    echo "build_sampler: variant $VARIANT, archive $ARCHIVE"
    if [[ ! -f "$ARCHIVE" ]]; then
        echo "build_sampler: no archive; run profiling/fetch_reference_sampler.sh and carry .reference"
        finish 1 missing-archive; return
    fi
    mkdir -p "$WORK/src" && tar -xzf "$ARCHIVE" -C "$WORK/src" || { finish 1 bad-archive; return; }
    src="$(dirname "$(find "$WORK/src" -maxdepth 2 -name setup.py -print -quit)")"
    if [[ "$VARIANT" == cpu ]]; then
        # As build_reference_sampler.sh: the CPU switch and an empty stand-in for the CUDA guard header.
        sed -i 's/^CPU_ONLY = False/CPU_ONLY = True/' "$src/setup.py"
        mkdir -p "$WORK/include/c10/cuda" && echo '#pragma once' >"$WORK/include/c10/cuda/CUDAGuard.h"
        export CPPFLAGS="-I$WORK/include ${CPPFLAGS:-}"
    else
        if ! command -v nvcc >/dev/null 2>&1 && [[ -x /usr/local/cuda/bin/nvcc ]]; then
            export PATH="/usr/local/cuda/bin:$PATH"
        fi
        command -v nvcc >/dev/null 2>&1 || { echo "build_sampler: nvcc not found"; finish 1 no-nvcc; return; }
        nvcc --version | tail -n 2
        export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
        echo "build_sampler: TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
    fi
    command -v ninja >/dev/null 2>&1 && echo "build_sampler: ninja $(ninja --version)" || echo "build_sampler: no ninja (serial build)"
    (cd "$src" && MAX_JOBS="${MAX_JOBS:-16}" "$PY" -m pip install --no-deps --no-build-isolation --no-index \
        --no-cache-dir --disable-pip-version-check --target "$SITE" -v .) || { rc=$?; reason=build-failed; }
    if [[ $rc == 0 ]]; then
        # Import from / so the source tree cannot shadow the build.
        (cd / && PYTHONPATH="$SITE" "$PY" -c 'import torch, spatial_correlation_sampler_backend, spatial_correlation_sampler as s; print("build_sampler: import OK", s.__file__)') \
            || { rc=1; reason=import-failed; }
    fi
    echo "build_sampler: exit status $rc ($reason) after $((SECONDS - start)) s"
    finish "$rc" "$reason"
}

# Job control gives the background build its own process group, so it can be stopped whole.
set -m
build_sampler >"$OUT/sampler-build.log" 2>&1 &
build_pid=$!
set +m

"$PY" "$ROOT/profiling/gpu_check.py" --out "$OUT" --sampler-site "$SITE" --sampler-status "$STATUS" \
    --sampler-log "$OUT/sampler-build.log" "$@" 2>&1 | tee "$OUT/gpu_check.log"
rc=${PIPESTATUS[0]}
# CPU thread scaling on the GPU machine's host cores (this project's CPUs have 2): bench.py's
# forward and forward+backward at 1 to 16 threads, two configurations, no C++ reference, at most
# CPU_SCALING_S seconds (default 90; 0 skips it). bench.py saves after every configuration.
if [[ "${CPU_SCALING_S:-90}" != 0 ]]; then
    timeout "${CPU_SCALING_S:-90}" "$PY" "$ROOT/profiling/bench.py" --threads 1,2,4,8,16 --only mmtracker,large \
        --repeat 3 --no-reference --no-tiny --no-docs --out "$OUT/bench-cpu-threads.json" \
        >"$OUT/bench-cpu-threads.log" 2>&1 || echo "gpu_check.sh: CPU thread scaling stopped (status $?)"
fi
# gpu_check.py waited for the build up to its deadline; one still running then is stopped.
if [[ ! -f "$STATUS" ]]; then
    echo "gpu_check.sh: stopping the unfinished sampler build" | tee -a "$OUT/sampler-build.log"
    kill -- "-$build_pid" 2>/dev/null
fi
wait "$build_pid" 2>/dev/null
rm -rf "$WORK"
exit "$rc"
