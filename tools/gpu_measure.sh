#!/usr/bin/env bash
# The GPU measurements of the low-VRAM runtime in one go (README "CUDA build", GPU.md §4), on a
# machine with an NVIDIA GPU and the folder tools/package_cuda.sh made (default gpu-bin/, with
# nijigen, compare_images and make_real_shape_files of a `--features cuda` release build).
#
#   tools/gpu_measure.sh [BIN_DIR] [OUT_DIR]      (OUT_DIR default: $OUT or gpu-results/)
#   PARTS="tiny plan video-12g" tools/gpu_measure.sh ...   (a subset, e.g. to stay within a
#   10-minute call; parts: tiny plan video-12g video-resident video-12g-blocks image-8g)
#
# 1. the GPU, driver and `nijigen devices`;
# 2. the tiny demo models on the CPU and on the GPU: the still and the frames compared value by
#    value (random weights, so any kernel difference shows);
# 3. the real shapes (zero-filled sparse files at the exact sizes and types; the compute cost of
#    ggml's kernels does not depend on the values): `plan` at 12G, then Wan 480x832x81 with
#    --vram-budget 12G (the planner streams the DiT) and with the DiT resident under a large
#    budget, 2 steps each, and SDXL 1024x1024 at 8G: the accountant's peak, the driver's peak
#    (sampled by nijigen, and nvidia-smi every 100 ms), seconds per step.
# Everything lands in OUT_DIR as text and JSON; nothing is interpreted here.
set -uo pipefail
bin=$(cd "${1:-gpu-bin}" && pwd)
out=${2:-${OUT:-gpu-results}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$bin"
[ -f libggml-cuda.so.0 ] || unxz -k libggml-cuda.so.0.xz
# cuBLAS (and the rest of CUDA) from the machine's PyTorch environment, or CUDA_LIBS.
NV=$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null)/nvidia
export LD_LIBRARY_PATH=$bin:${CUDA_LIBS:+$CUDA_LIBS:}$(ls -d "$NV"/*/lib 2>/dev/null | tr '\n' ':')${LD_LIBRARY_PATH:-}
N=$bin/nijigen
parts=${PARTS:-tiny plan video-12g video-resident video-12g-blocks image-8g}
want() { [[ " $parts " == *" $1 "* ]]; }
log() { echo "== $*" | tee -a "$out/log.txt"; }
run() { # name, command...: stdout to name.out (JSON summaries), stderr to name.err, time to log
    local name=$1; shift
    local t0=$(date +%s.%N)
    "$@" > "$out/$name.out" 2> "$out/$name.err"
    local rc=$?
    printf '%s: rc %d, %.1f s: %s\n' "$name" $rc "$(echo "$(date +%s.%N) - $t0" | bc)" "$*" | tee -a "$out/log.txt"
    return $rc
}

log "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv | tee "$out/gpu.csv"
nvidia-smi | head -4 | tee -a "$out/gpu.csv"
ls "$NV" | tee "$out/nvidia-libs.txt" >/dev/null
run devices "$N" devices
cat "$out/devices.out"

demo=$out/demo
mkdir -p "$demo"
if want tiny || [ ! -f "$demo/cpu/demo.png" ]; then
log "tiny models: cpu vs cuda"
run demo-cpu "$N" demo --device cpu --cache-dir "$demo/models" --output-dir "$demo/cpu" \
    --frames-dir "$demo/cpu/frames" --overwrite --json
run demo-cuda "$N" demo --device cuda:0 --cache-dir "$demo/models" --output-dir "$demo/cuda" \
    --frames-dir "$demo/cuda/frames" --overwrite --json
run compare-still "$bin/compare_images" "$demo/cpu/demo.png" "$demo/cuda/demo.png"
run compare-frames "$bin/compare_images" "$demo/cpu/frames" "$demo/cuda/frames"
cat "$out/compare-still.out" "$out/compare-frames.out"
fi

log "real shapes"
rs=${REAL_SHAPES:-/tmp/nijigen-real-shapes}
run make-files "$bin/make_real_shape_files" "$rs"
img=$demo/cpu/demo.png
wan=(-m "$rs/wan2.1-i2v-14b-480p-Q4_K_M.gguf" --t5 "$rs/umt5-xxl-encoder-Q8_0.gguf"
     --clip-vision "$rs/clip_vision_h.safetensors" --vae "$rs/wan_2.1_vae.safetensors"
     -i "$img" -p "she turns her head" -W 832 -H 480 --frames 81 --steps 2 --seed 1)
sdxl=(-m "$rs/sdxl_checkpoint_f16.safetensors" -p "1girl" -W 1024 -H 1024 --steps 4 --seed 1)
if want plan; then
run plan-video-12g "$N" plan video "${wan[@]}" --device cuda:0 --vram-budget 12G
run plan-video-12g-json "$N" plan video "${wan[@]}" --device cuda:0 --vram-budget 12G --json
run plan-image-8g "$N" plan image "${sdxl[@]}" --device cuda:0 --vram-budget 8G
cat "$out/plan-video-12g.out" "$out/plan-image-8g.out"
fi
smi() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$out/$1.smi" & echo $!; }
for case in "video-12g:--vram-budget 12G" "video-resident:--vram-budget 60G --offload none" \
            "video-12g-blocks:--vram-budget 12G --offload blocks"; do
    name=${case%%:*}; flags=${case#*:}
    want "$name" || continue
    p=$(smi "$name")
    # shellcheck disable=SC2086
    run "$name" "$N" video "${wan[@]}" --device cuda:0 $flags --overwrite -o "$out/$name.mp4" --json
    kill "$p"
    echo "$name: nvidia-smi peak $(sort -n "$out/$name.smi" | tail -1) MiB" | tee -a "$out/log.txt"
    cat "$out/$name.out"; tail -3 "$out/$name.err"
done
want image-8g || { log "done"; exit 0; }
p=$(smi image-8g)
run image-8g "$N" image "${sdxl[@]}" --device cuda:0 --vram-budget 8G --overwrite -o "$out/image-8g.png" --json
kill "$p"
echo "image-8g: nvidia-smi peak $(sort -n "$out/image-8g.smi" | tail -1) MiB" | tee -a "$out/log.txt"
cat "$out/image-8g.out"; tail -3 "$out/image-8g.err"
log "done"
