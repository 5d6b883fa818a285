#!/usr/bin/env bash
# One prepared GPU check for a lent CUDA machine (no internet there): the trainer's CUDA path (torchrun + NCCL,
# mixed precision, float16 export) on the competition preset, then the model's CUDA throughput.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]
#
# Needs python3 with torch (CUDA), timm, onnx, onnxruntime, numpy, opencv, pyyaml, tqdm; pydicom and polars can
# come as wheels in .whl/ (installed into /tmp/site). The phantom is written uncompressed, so no decoder plugin
# is needed. Prints figures; asserts nothing beyond "each step exits 0".
set -euo pipefail
export PYTHONUNBUFFERED=1
out=${1:-${OUT:-/tmp/gpu_check}}
work=$(mktemp -d)
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 - <<'EOF'
import torch, timm, onnx, onnxruntime, pydicom, polars
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}), timm {timm.__version__}, "
      f"onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}, pydicom {pydicom.__version__}, "
      f"polars {polars.__version__}")
EOF

step() { echo; echo "=== $1  ($(date +%T)) ==="; }

step "phantom: 80 train + 20 test series, uncompressed"
python3 -m phantom --out "$work/data" --series 80 --test-series 20 --compressed-fraction 0 --workers 8 --quiet

step "competition preset (tf_efficientnet_b0, 224 px, region stage) under torchrun on CUDA: 1 fold, 2 short epochs, fp16 export"
start=$(date +%s)
torchrun --standalone --nproc_per_node 1 train_minimal.py --config configs/competition.yaml \
  --data-dir "$work/data" --out "$work/weights" --cache-dir "$work/cache" --checkpoint-dir "$work/ckpt" \
  --folds 0 --epochs 2 --set train.windows_per_epoch=4096 --set train.num_workers=8 --set train.val_every=1 \
  --fp16 --no-oof --quiet 2>&1 | tee "$out/train.log" | grep -E "INFO|WARNING|ERROR|Error" || true
test "${PIPESTATUS[0]}" -eq 0
echo "train + export wall time: $(( $(date +%s) - start )) s"
cp "$work/weights/manifest.json" "$out/manifest.json"
python3 - "$work/weights" <<'EOF'
import json, sys
from pathlib import Path
import numpy as np, onnxruntime as ort
weights = Path(sys.argv[1])
manifest = json.loads((weights / "manifest.json").read_text())
fold = manifest["folds"][0]
session = ort.InferenceSession(str(weights / fold["file"]), providers=["CPUExecutionProvider"])
inp = session.get_inputs()[0]
size = manifest["preprocess"]["image_size"]
x = np.random.default_rng(0).uniform(size=(4, 5, size, size)).astype(manifest["input_dtype"])
y = session.run(None, {inp.name: x})[0]
print(f"manifest: {len(manifest['folds'])} fold(s), input {inp.type} {inp.shape}, output {y.shape}, "
      f"finite {bool(np.isfinite(y).all())}, val_score {fold.get('val_score')}")
EOF

step "model throughput: bare b0 dual-stream on CUDA (torch), plus predict on this machine's CPU (onnxruntime)"
python3 benchmarks/bench_predict.py --slices 80 --torch-cuda 2>&1 | tee "$out/bench_predict.log"
rm -rf "$work"
