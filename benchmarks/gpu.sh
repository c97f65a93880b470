#!/usr/bin/env bash
# Every GPU measurement in one run (meant to finish in under 8 minutes on one H100/H200): speed of
# each mode in bf16 (eager and compiled, batch 8), λ re-adjust vs VAE decode, peak GPU memory
# for 512² and 4096² outputs, and the fast decoder beside the VAE decoder. Installs nothing but the project itself. Writes one JSON file per
# benchmark under ${OUT:-benchmarks/results} and prints the tables; `python benchmarks/report.py`
# then fills the GPU tables of the docs from benchmarks/results.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
python -c "import pisa_core" 2>/dev/null || python -m pip install -q --no-deps -e .
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device"
print(torch.cuda.get_device_name(0), "torch", torch.__version__, "bf16:", torch.cuda.is_bf16_supported())
PY
date -u +"%Y-%m-%d %H:%M UTC"
stamp=$(date -u +%Y-%m-%dT%H%M)
# each script exits non-zero when one of its measurements failed: both still run, and this script
# then exits non-zero too
status=0
python benchmarks/speed.py --device cuda --dtype bf16 --repeats 10 --out "$OUT/speed-cuda-$stamp.json" --variants \
    ours-default ours-adjustable ours-adjustable-sequential ours-readjust ours-decode peft-unmerged-default \
    ours-default-compiled ours-batch8 || status=1
python benchmarks/memory.py --device cuda --dtype bf16 --sizes 512 1024 4096 --out "$OUT/memory-cuda-$stamp.json" || status=1
python benchmarks/decoder_speed.py --device cuda --dtype bf16 --out "$OUT/decoder-speed-cuda-$stamp.json" || status=1
exit $status
