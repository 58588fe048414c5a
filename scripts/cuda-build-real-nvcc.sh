#!/usr/bin/env bash
# Build the `cuda` feature once with a REAL nvcc taken from PyPI wheels, so the
# CUDA kernels of candle-kernels really compile (PTX + the static libmoe.a).
# CI only type-checks the feature with a stand-in nvcc (.ci/stand-in-cuda); this
# script is the manual, out-of-CI check. No GPU is needed: nothing here runs a kernel.
#
#   scripts/cuda-build-real-nvcc.sh [VENV_DIR]        (default /work/cuda-venv)
#
# Environment knobs (all optional):
#   CUDA_TOOLKIT_PIN  cuda-toolkit meta-package version on PyPI   (default 13.4.3 = CUDA 13.4.92)
#   CUDA_CAPS         compute caps to build, space separated         (default "80")
#   CARGO_TARGET_DIR  where to build                                 (default /work/cuda-target)
#   PROFILE           cargo profile: release or dev, or `check`: cargo check, which
#                     still runs candle-kernels' build script, so every kernel is
#                     compiled by nvcc, but links nothing   (default release)
#   CUDAFORGE_THREADS parallel nvcc jobs inside candle-kernels' build (default 1)
#   SEED_TARGET       a target/<profile> dir to copy as a warm start (default none)
#
# Why CUDA 13.4 and the `cuda-toolkit` meta-package: the CUDA 12 wheel
# `nvidia-cuda-nvcc-cu12` (12.9.86) ships only ptxas + libnvvm, no nvcc / cicc /
# cudafe++ / fatbinary. The CUDA 13 wheels ship the full compiler and all install
# into one toolkit-shaped tree, site-packages/nvidia/cu13/{bin,include,lib,nvvm}
# (its bin/nvcc.profile uses TOP=bin/..). cudarc 0.19.10 (feature
# cuda-version-from-build-system) parses `nvcc --version` and knows CUDA <= 13.4,
# so 13.5 would be rejected ("Unsupported cuda toolkit version").
#
# What the wheels lack and this script adds in $VENV/cuda-root:
#   * unversioned lib*.so links (libcudart.so, libcublas.so, ... ) for -l flags;
#   * lib64/stubs/libcuda.so: the driver is not on PyPI. candle enables cudarc's
#     `dynamic-linking`, so linking the `stepwise` binary needs -lcuda; like the
#     toolkit's own stub, ours exports the driver API names (from cuda.h and
#     cudarc's bindings) with soname libcuda.so.1 and every call returns
#     CUDA_ERROR_STUB_LIBRARY (34). On a real machine the driver's libcuda.so.1 is used.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
step() { echo "== $* ($(( $(date +%s) - start ))s)"; }

VENV="${1:-/work/cuda-venv}"
PIN="${CUDA_TOOLKIT_PIN:-13.4.3}"
CAPS="${CUDA_CAPS:-80}"
PROFILE="${PROFILE:-release}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/cuda-target}"
export CARGO_BUILD_JOBS=1
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-1}"

# ---------------------------------------------------------------- 1. wheels
step "venv $VENV with cuda-toolkit[nvcc,cccl,cudart,cublas,curand,nvrtc]==$PIN"
if [ ! -x "$VENV/bin/python" ]; then python3 -m venv "$VENV"; fi
nice -n 19 "$VENV/bin/pip" install -q --disable-pip-version-check \
  "cuda-toolkit[nvcc,cccl,cudart,cublas,curand,nvrtc]==$PIN"
"$VENV/bin/pip" list --disable-pip-version-check 2>/dev/null | grep -i -E '^(cuda-toolkit|nvidia-)' || true

CU13="$(ls -d "$VENV"/lib/python3*/site-packages/nvidia/cu13 | head -1)"
[ -x "$CU13/bin/nvcc" ] || { echo "no nvcc in $CU13/bin" >&2; exit 1; }
[ -x "$CU13/nvvm/bin/cicc" ] || { echo "no cicc in $CU13/nvvm/bin" >&2; exit 1; }

# ---------------------------------------------------------------- 1b. CUDA root
ROOT="$VENV/cuda-root"
step "assemble $ROOT"
rm -rf "$ROOT"
mkdir -p "$ROOT/lib64/stubs"
ln -s "$CU13/bin" "$ROOT/bin"
ln -s "$CU13/include" "$ROOT/include"
ln -s "$CU13/nvvm" "$ROOT/nvvm"
ln -s lib64 "$ROOT/lib"
for f in "$CU13"/lib/*; do
  b="$(basename "$f")"
  ln -s "$f" "$ROOT/lib64/$b"
  case "$b" in
    *.so.*) u="${b%%.so.*}.so"; [ -e "$ROOT/lib64/$u" ] || ln -s "$f" "$ROOT/lib64/$u" ;;
  esac
done

# The driver stub (see the header).
stub_c="$ROOT/lib64/stubs/libcuda_stub.c"
{
  gcc -E -P -x c -I "$ROOT/include" "$ROOT/include/cuda.h" \
    | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d ' (\t'
  cudarc_ver="$(awk '/^name = "cudarc"/{getline; gsub(/"/,"",$3); print $3}' Cargo.lock)"
  for src in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$cudarc_ver"/src/driver/sys/mod.rs; do
    [ -f "$src" ] && grep -oE '^[[:space:]]+fn cu[A-Za-z0-9_]+\(' "$src" | sed -E 's/^[[:space:]]+fn //; s/\($//'
  done
} | sort -u | awk '{ printf "int %s(void) { return 34; }\n", $1 }' > "$stub_c"
gcc -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 -o "$ROOT/lib64/stubs/libcuda.so" "$stub_c"
echo "libcuda stub: $(grep -c . "$stub_c") driver API names"

# ---------------------------------------------------------------- 2. environment
export CUDA_ROOT="$ROOT" CUDA_PATH="$ROOT" CUDA_HOME="$ROOT" CUDA_TOOLKIT_ROOT_DIR="$ROOT"
export NVCC="$ROOT/bin/nvcc"
export PATH="$ROOT/bin:$PATH"
unset CUDARC_CUDA_VERSION NVCC_CCBIN || true
step "nvcc: $(command -v nvcc)"
nvcc --version
echo "host compiler: $(gcc --version | head -1)"
nvcc --list-gpu-arch | tr '\n' ' '; echo

# Quick smoke test of the toolchain outside cargo.
smoke="$(mktemp -d)"
printf '#include <cuda_fp16.h>\n#include <cuda_bf16.h>\nextern "C" __global__ void k(__half *x){ x[threadIdx.x] = __hadd(x[threadIdx.x], x[0]); }\n' > "$smoke/k.cu"
nvcc --ptx -arch=sm_80 -o "$smoke/k.ptx" "$smoke/k.cu"
nvcc -c -arch=sm_80 -o "$smoke/k.o" "$smoke/k.cu"
echo "smoke test OK: $(grep -m1 '^.target' "$smoke/k.ptx")"
rm -rf "$smoke"

pdir="$PROFILE"; [ "$PROFILE" = dev ] || [ "$PROFILE" = check ] && pdir=debug
if [ "$PROFILE" = check ]; then cargo_cmd=(check); else cargo_cmd=(build --profile "$PROFILE"); fi
if [ -n "${SEED_TARGET:-}" ] && [ ! -e "$CARGO_TARGET_DIR/$pdir" ]; then
  step "seed $CARGO_TARGET_DIR/$pdir from $SEED_TARGET"
  mkdir -p "$CARGO_TARGET_DIR/$pdir"
  for d in .fingerprint build deps; do
    [ -d "$SEED_TARGET/$d" ] && nice -n 19 cp -a "$SEED_TARGET/$d" "$CARGO_TARGET_DIR/$pdir/"
  done
fi

# ---------------------------------------------------------------- 3. build
rc=0
for cap in $CAPS; do
  step "cargo ${cargo_cmd[*]} -p stepwise-pipeline --features cuda, CUDA_COMPUTE_CAP=$cap"
  if CUDA_COMPUTE_CAP="$cap" nice -n 19 cargo "${cargo_cmd[@]}" -p stepwise-pipeline --features cuda \
       --locked; then
    echo "BUILD OK for compute cap $cap"
    # ---------------------------------------------------------- 4. what came out
    for out in $(ls -td "$CARGO_TARGET_DIR/$pdir"/build/candle-kernels-*/out 2>/dev/null | head -1); do
      n=$(ls "$out"/*.ptx 2>/dev/null | wc -l)
      empty=$(find "$out" -maxdepth 1 -name '*.ptx' -empty | wc -l)
      echo "candle-kernels OUT_DIR: $out"
      echo "  $n PTX files ($empty empty), targets: $(grep -h -m1 '^.target' "$out"/*.ptx | sort | uniq -c | tr '\n' ' ')"
      ls -la "$out"/libmoe.a 2>/dev/null && echo "  libmoe.a members: $(ar t "$out/libmoe.a" | tr '\n' ' ')"
    done
    bin="$CARGO_TARGET_DIR/$pdir/stepwise"
    [ -x "$bin" ] && { echo "binary: $bin"; readelf -d "$bin" | grep NEEDED | grep -E 'cuda|cublas|curand|nvrtc' || true; }
  else
    rc=$?
    echo "BUILD FAILED for compute cap $cap (exit $rc)"
  fi
done
step "done (nvcc $(nvcc --version | sed -n 4p))"
exit "$rc"
