#!/usr/bin/env bash
# Plans the teach stage as TASKS array tasks, submits them (PARALLEL at a
# time) and a finalize job that runs when they have all ended.
#
#   deploy/slurm/submit.sh CONFIG STORE TASKS [PARALLEL]
#
# STORE: a path on a shared filesystem, file://, s3://bucket/prefix, gs://,
# az://; credentials from the provider's usual variables (AWS_*, GOOGLE_*,
# AZURE_*), exported to the jobs and never written anywhere by stepwise.
# SBATCH_OPTS: extra sbatch options for both jobs (partition, account,
# --gres=gpu:1 with TEACHER_SERVER_CMD, ...).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
config=$1 store=$2 tasks=$3 parallel=${4:-$3}
bin=${STEPWISE:-stepwise}
"$bin" teach plan "$config" --store "$store" --tasks "$tasks"
STEPWISE_CONFIG=$(realpath "$config")
export STEPWISE_CONFIG STEPWISE_STORE=$store
# shellcheck disable=SC2086
array=$(sbatch --parsable --export=ALL ${SBATCH_OPTS:-} --array="0-$((tasks - 1))%$parallel" "$here/teach-array.sbatch")
# shellcheck disable=SC2086
final=$(sbatch --parsable --export=ALL ${SBATCH_OPTS:-} --dependency="afterany:$array" "$here/finalize.sbatch")
echo "array job $array ($tasks tasks, $parallel at a time); finalize job $final"
