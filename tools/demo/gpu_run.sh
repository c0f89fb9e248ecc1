#!/usr/bin/env bash
# The one GPU command: trains base + adapters into a temp folder and packs it for the trip back.
#   tools/demo/gpu_run.sh OUT_DIR [train.py model options...]
# OUT_DIR receives train_log.txt, metrics.json and demo.tar.part-aa, -ab, ... (15 MB pieces: the
# device tool returns files of at most 16 MiB). Rebuild here with: cat demo.tar.part-* | tar x
set -uo pipefail
out=$1; shift
work=$(mktemp -d)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import torch, transformers, peft, tokenizers; print(torch.__version__, transformers.__version__, peft.__version__, tokenizers.__version__)"
python3 tools/demo/train.py model --out "$work" "$@" 2>&1 \
  | grep --line-buffered -v -e 'Loading weights' -e 'Writing model shards' | tee "$out/train_log.txt"
rc=${PIPESTATUS[0]}
cp "$work/metrics.json" "$out/" 2>/dev/null
(cd "$work" && tar cf - .) | split -b 15M - "$out/demo.tar.part-"
ls -la "$out"
exit "$rc"
