#!/usr/bin/env bash
# A CUDA 13.0 toolchain for `cargo build --features cuda` / `--features nccl` on a machine without the
# CUDA toolkit or a GPU, from NVIDIA's PyPI wheels (nvcc, nvvm, headers, cuBLAS, cuRAND, NVRTC, NCCL).
# The driver library (libcuda) comes from the GPU machine at run time; for linking, a stub holding
# every driver function that cudarc binds is compiled here.
# Usage: source <(tools/cuda-from-pypi.sh DIR)  then  CUDA_COMPUTE_CAP=90 cargo build --release --features nccl
# (set CUDA_COMPUTE_CAP to the GPU's, e.g. 80 for A100, 90 for H100/H200).
set -euo pipefail
DIR=$(realpath -m "${1:?usage: cuda-from-pypi.sh DIR}")
mkdir -p "$DIR/wheels" "$DIR/root"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  -d "$DIR/wheels" "nvidia-cuda-nvcc==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-runtime==13.0.*" \
  "nvidia-cuda-crt==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-cublas==13.0.*" "nvidia-curand==10.4.0.*" \
  "nvidia-cuda-nvrtc==13.0.*" "nvidia-nccl-cu13" >&2
for w in "$DIR"/wheels/*.whl; do python3 -m zipfile -e "$w" "$DIR/root" >&2; done
CUDA="$DIR/root/nvidia/cu13"
chmod +x "$CUDA"/bin/* "$CUDA"/nvvm/bin/*
cd "$CUDA/lib"
for l in cublas cublasLt cudart nvrtc; do ln -sf "lib$l.so.13" "lib$l.so"; done
ln -sf libcurand.so.10 libcurand.so
ln -sf ../../nccl/lib/libnccl.so.2 libnccl.so
# The driver stub: every cu* function of the cudarc version in Cargo.lock.
CUDARC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | tail -1)
grep -o "fn cu[A-Z][A-Za-z0-9_]*" "$CUDARC/src/driver/sys/mod.rs" | sed 's/fn //' | sort -u |
  awk '{print "void " $1 "(void) {}"}' > "$DIR/cuda_stub.c"
gcc -shared -fPIC -o libcuda.so "$DIR/cuda_stub.c" -Wl,-soname,libcuda.so.1
echo "export CUDA_ROOT=$CUDA CUDA_PATH=$CUDA PATH=$CUDA/bin:\$PATH"
