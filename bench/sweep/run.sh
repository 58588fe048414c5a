#!/usr/bin/env bash
# The sweep the default student's size, steps and learning rate were chosen
# from (docs/results.md, "Choosing the default student"). Each point is the
# embedded default with a few [student]/[train] keys changed, run end to end
# with `stepwise run`; the table prints at the end.
#
#   bash bench/sweep/run.sh [OUT]      (OUT: runs/sweep; about 5 min a point on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-runs/sweep}
mkdir -p "$out"
cargo build --release -q -p stepwise-pipeline
bin=target/release/stepwise
# name  toml-body (\n-separated)
points=(
  # The sweep of 2026-12-05, after micro-batches ran side by side (batch 8 x 2
  # micro-batches a step, the same 16 examples): every point has the 5-minute budget.
  "old-default-s750-b16|[train]\nsteps = 750\nbatch_size = 16\ngrad_accum = 1\n[eval]\nrationale_tokens = 160"
  "s750-b8x2|[train]\nsteps = 750"
  "s1400-h96-lr2|[train]\nsteps = 1400\n[train.optimizer]\nlr = 0.002"
  "s1100-h128|[student]\nhidden_size = 128\n[train]\nsteps = 1100"
  "s1500-h128-l3|[student]\nhidden_size = 128\nlayers = 3\n[train]\nsteps = 1500"
  "default|"
)
dirs=()
for p in "${points[@]}"; do
  name=${p%%|*}
  body=${p#*|}
  printf '[run]\nname = "%s"\n%b\n' "$name" "$body" > "$out/$name.toml"
  if [ ! -f "$out/$name/metrics.json" ]; then
    start=$(date +%s)
    "$bin" run "$out/$name.toml" --dir "$out/$name" > "$out/$name.log" 2>&1
    echo $(( $(date +%s) - start )) > "$out/$name/wall_s"
  fi
  dirs+=("$out/$name")
done
py=.venv/bin/python
[ -x "$py" ] || py=python3
"$py" bench/sweep/show.py "${dirs[@]}"
