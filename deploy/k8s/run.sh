#!/usr/bin/env bash
# Plans, runs and finalizes the teach stage on Kubernetes:
#
#   deploy/k8s/run.sh CONFIG STORE TASKS [PARALLEL] [IMAGE]
#
# The config goes in the ConfigMap stepwise-config; store credentials, if
# any, in the Secret stepwise-store (kubectl create secret generic
# stepwise-store --from-literal=AWS_ACCESS_KEY_ID=... ...).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
config=$1 store=$2 tasks=$3 parallel=${4:-$3} image=${5:-stepwise:latest}
fill() { sed -e "s|__TASKS__|$tasks|g" -e "s|__PARALLEL__|$parallel|g" -e "s|__STORE__|$store|g" -e "s|__IMAGE__|$image|g" "$1"; }
kubectl create configmap stepwise-config --from-file=stepwise.toml="$config" --dry-run=client -o yaml | kubectl apply -f -
kubectl delete job stepwise-teach-plan stepwise-teach stepwise-teach-finalize --ignore-not-found
fill "$here/plan-job.yaml" | kubectl apply -f -
kubectl wait --for=condition=complete --timeout=1h job/stepwise-teach-plan
fill "$here/teach-job.yaml" | kubectl apply -f -
# Complete, or failed (some index out of retries): finalize names what is missing.
kubectl wait --for=jsonpath='{.status.conditions[?(@.status=="True")].type}' --timeout=48h job/stepwise-teach || true
fill "$here/finalize-job.yaml" | kubectl apply -f -
kubectl wait --for=condition=complete --timeout=1h job/stepwise-teach-finalize
kubectl logs job/stepwise-teach-finalize
