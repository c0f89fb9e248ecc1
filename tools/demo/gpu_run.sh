#!/usr/bin/env bash
# The one GPU command: trains base + adapters into a temp folder and packs it for the trip back.
#   tools/demo/gpu_run.sh OUT_DIR [SCRIPT.py] [SCRIPT's `model` options...]
# SCRIPT is tools/demo/train.py (the dense demo, the default) or tools/demo/train_moe.py (the MoE
# demo). OUT_DIR receives train_log.txt, metrics.json and NAME.tar.part-aa, -ab, ... (15 MB pieces:
# the device tool returns files of at most 16 MiB), NAME = demo or demo-moe.
# Rebuild here with: cat NAME.tar.part-* | tar x
set -uo pipefail
out=$1; shift
script=tools/demo/train.py
if [[ ${1:-} == *.py ]]; then script=$1; shift; fi
case $(basename "$script") in
  train.py) name=demo ;;
  train_moe.py) name=demo-moe ;;
  *) echo "gpu_run.sh: unknown script $script" >&2; exit 2 ;;
esac
work=$(mktemp -d)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import torch, transformers, peft, tokenizers; print(torch.__version__, transformers.__version__, peft.__version__, tokenizers.__version__)"
python3 "$script" model --out "$work" "$@" 2>&1 \
  | grep --line-buffered -v -e 'Loading weights' -e 'Writing model shards' | tee "$out/train_log.txt"
rc=${PIPESTATUS[0]}
cp "$work/metrics.json" "$out/" 2>/dev/null
(cd "$work" && tar cf - .) | split -b 15M - "$out/$name.tar.part-"
ls -la "$out"
exit "$rc"
