#!/usr/bin/env bash
# Student training step, stepwise against PyTorch (PEFT for `lora`), in one
# run: each side on the same shape, batch, sequence and threads, then both
# tokens/s, their ratio and each side's peak resident memory.
#
#   bash bench/train_step_compare.sh [ARGS...]     ARGS as for the train_step bench, e.g.
#   bash bench/train_step_compare.sh smollm2-135m 8 128 3
#   bash bench/train_step_compare.sh smollm2-135m lora 8 128 3
#   bash bench/train_step_compare.sh 128 4 4 2 336 384 16 128 20     (the default run's 0.8M shape)
#
# THREADS (default 2) sets RAYON_NUM_THREADS and OMP_NUM_THREADS alike.
# Needs .venv with torch and peft (scripts/setup-data.sh --full). Not a test:
# numbers depend on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-2}
cargo build -q --release -p stepwise-student --bench train_step
bin=$(ls -t target/release/deps/train_step-* | grep -v '\.d$' | head -1)
rust=$(RAYON_NUM_THREADS=$threads "$bin" "$@")
torch=$(OMP_NUM_THREADS=$threads .venv/bin/python bench/train_step_torch.py "$@")
echo "stepwise: $rust"
echo "pytorch:  $torch"
tps() { grep -o '[0-9.]* tokens/s' <<<"$1" | tail -1 | cut -d' ' -f1; }
rss() { grep -o 'peak resident memory: [0-9]* MiB' <<<"$1" | grep -o '[0-9]*' | tail -1; }
r=$(tps "$rust"); t=$(tps "$torch")
python3 -c "print(f'tokens/s: stepwise {float(\"$r\"):.0f}, pytorch {float(\"$t\"):.0f}, ratio {float(\"$r\")/float(\"$t\"):.2f}x; peak RSS stepwise $(rss "$rust") MiB, pytorch $(rss "$torch") MiB')"
