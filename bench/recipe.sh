#!/usr/bin/env bash
# nanoGPT's CPU Shakespeare recipe for each model, one after the other (never two at once):
# char-level Tiny Shakespeare, 4 layers, 4 heads, 128 dims, context 64, batch 12, 2000 steps,
# lr 1e-3 cosine to 1e-4 after 100 warmup steps, dropout 0, eval on 20 batches every 250 steps.
# These are train.py's defaults (the "cpu" preset trains on characters); fgram's preset has dropout 0.1,
# set to 0 here as the others have it. Prints each run's final val loss and wall time (GNU time).
#   bash bench/recipe.sh                 # all models
#   bash bench/recipe.sh gpt moderngpt   # some
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p out
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(gpt moderngpt moegpt mlamoe fgram fgram-off)
for m in "${models[@]}"; do
  case "$m" in
    fgram) args=(--model_type fgram --dropout 0) ;;
    fgram-off) args=(--model_type fgram --fgram_max_n 0 --dropout 0) ;;
    *) args=(--model_type "$m") ;;
  esac
  out="out/recipe-$m"
  /usr/bin/time -f "%e" -o "$out.time" python train.py "${args[@]}" --overwrite \
      --out_dir "$out" --log_interval 500 > "$out.log" 2>&1 || { echo "$m failed: see $out.log"; continue; }
  val=$(grep -o 'val loss [0-9.]*' "$out.log" | tail -1 | cut -d' ' -f3)
  echo "$m: val loss $val, wall $(cat "$out.time") s"
done
