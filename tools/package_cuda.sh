#!/usr/bin/env bash
# Gathers a CUDA build of nijigen and the shared libraries it needs into one folder (default
# gpu-bin/, git-ignored) to carry to a machine with an NVIDIA GPU. cuBLAS is not copied (large):
# on the GPU machine it comes from its own CUDA / PyTorch environment (see README, CUDA build).
#   tools/package_cuda.sh [TARGET_DIR] [OUT_DIR]
set -euo pipefail
target=${1:-target}
out=${2:-gpu-bin}
bin="$target/release/nijigen"
[ -x "$bin" ] || { echo "no $bin: build with --features cuda first (README, CUDA build)" >&2; exit 1; }
lib=$(ls -d "$target"/release/build/llama-cpp-sys-2-*/out/lib | head -n 1)
[ -f "$lib/libggml-cuda.so.0" ] || { echo "$lib has no libggml-cuda.so.0: not a CUDA build" >&2; exit 1; }
mkdir -p "$out"
cp -f "$bin" "$out/"
# The helpers tools/gpu_measure.sh runs (cargo build --release --features cuda --examples).
for e in compare_images make_real_shape_files; do
    if [ -x "$target/release/examples/$e" ]; then cp -f "$target/release/examples/$e" "$out/"; fi
done
for l in ggml ggml-base ggml-cpu ggml-cuda; do cp -fL "$lib/lib$l.so.0" "$out/"; done
cu=${CUDA_PATH:-$(echo "$PWD"/.cuda/lib/python3*/site-packages/nvidia/cu13)}
[ -f "$cu/lib/libcudart.so.13" ] && cp -fL "$cu/lib/libcudart.so.13" "$out/"
# Without debug info (the release profile keeps it) and with the large CUDA library compressed,
# the folder fits the 64 MiB a GPU session can carry (about 58 MB).
for f in "$out"/nijigen "$out"/compare_images "$out"/make_real_shape_files "$out"/lib*.so.0; do
    if [ -f "$f" ]; then strip --strip-debug "$f"; fi
done
xz -T0 -3 -f "$out/libggml-cuda.so.0"
ls -la "$out"
du -sb "$out"
echo "on the GPU machine: tools/gpu_measure.sh $out (all measurements), or in the copied folder: unxz -k libggml-cuda.so.0.xz; LD_LIBRARY_PATH=\$PWD:<cuBLAS lib dir> ./nijigen devices"
