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
  "s300-h128|[student]\nhidden_size = 128\n[train]\nsteps = 300"
  "s600-h128|[student]\nhidden_size = 128\n[train]\nsteps = 600"
  "s600-h128-lr6|[student]\nhidden_size = 128\n[train]\nsteps = 600\nwarmup_steps = 40\n[train.optimizer]\nlr = 0.006"
  "b32-s300-h128|[student]\nhidden_size = 128\n[train]\nsteps = 300\nbatch_size = 32"
  "s800-h128-l3|[student]\nhidden_size = 128\nlayers = 3\n[train]\nsteps = 800\n[eval]\nrationale_tokens = 96"
  "s500-h192|[student]\nhidden_size = 192\n[train]\nsteps = 500\n[eval]\nrationale_tokens = 96"
  "s900-h96|[student]\nhidden_size = 96\n[train]\nsteps = 900\n[eval]\nrationale_tokens = 96"
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
