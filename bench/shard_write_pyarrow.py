#!/usr/bin/env python3
"""pyarrow's side of the shard-writing benchmark: the same rows as
datasets/benches/shard_write.rs, written with zstd, timed.

Prints "build_s=<s> write_s=<s> bytes=<n>": building the Arrow table from
Python lists, and writing it (pq.write_table, then fsync).
"""
import os
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq


def rows(n):
    cols = {k: [] for k in [
        "example_id", "task", "split", "input", "choices", "gold_label", "teacher_label", "rationale",
        "sample_index", "vote_share", "agrees_with_gold", "rationalized", "teacher_model", "prompt_template",
        "prompt_hash", "temperature", "max_tokens", "seed", "prompt_tokens", "completion_tokens", "latency_ms",
        "finish_reason", "created_at", "raw_completion", "top_logprobs"]}
    for i in range(n):
        a, b, c = i % 97, i % 13, i % 7
        ans = str(a + b - c)
        cols["example_id"].append(f"ex{i:08d}")
        cols["task"].append("arith")
        cols["split"].append("train")
        cols["input"].append(f"Ann has {a} apples. She buys {b} more apples and gives {c} to Ben. How many apples does Ann have now?")
        cols["choices"].append(None)
        cols["gold_label"].append(ans)
        cols["teacher_label"].append(ans)
        cols["rationale"].append(
            f"There are {a} apples at the start. {b} more apples are added, so {a} + {b} = {a + b}. "
            f"{c} apples are taken away, so {a + b} - {c} = {a + b - c}. So the answer is {ans}.")
        cols["sample_index"].append(i % 4)
        cols["vote_share"].append(0.75 if i % 4 == 0 else 1.0)
        cols["agrees_with_gold"].append(True)
        cols["rationalized"].append(False)
        cols["teacher_model"].append("qwen2.5-coder-1.5b-instruct")
        cols["prompt_template"].append("arith-cot-v1")
        cols["prompt_hash"].append("9f2c4e1ab37d5e08")
        cols["temperature"].append(0.7)
        cols["max_tokens"].append(256)
        cols["seed"].append(i)
        cols["prompt_tokens"].append(100 + i % 50)
        cols["completion_tokens"].append(40 + i % 30)
        cols["latency_ms"].append(200 + i % 100)
        cols["finish_reason"].append("stop")
        cols["created_at"].append(1_763_900_000_000 + i)
        cols["raw_completion"].append(None)
        cols["top_logprobs"].append(None)
    return cols


SCHEMA = pa.schema([
    ("example_id", pa.string()), ("task", pa.string()), ("split", pa.string()), ("input", pa.string()),
    ("choices", pa.list_(pa.string())), ("gold_label", pa.string()), ("teacher_label", pa.string()),
    ("rationale", pa.string()), ("sample_index", pa.uint32()), ("vote_share", pa.float32()),
    ("agrees_with_gold", pa.bool_()), ("rationalized", pa.bool_()), ("teacher_model", pa.string()),
    ("prompt_template", pa.string()), ("prompt_hash", pa.string()), ("temperature", pa.float32()),
    ("max_tokens", pa.uint32()), ("seed", pa.int64()), ("prompt_tokens", pa.uint32()),
    ("completion_tokens", pa.uint32()), ("latency_ms", pa.uint32()), ("finish_reason", pa.string()),
    ("created_at", pa.timestamp("ms", tz="UTC")), ("raw_completion", pa.string()), ("top_logprobs", pa.string()),
])


def main():
    n, path = int(sys.argv[1]), sys.argv[2]
    cols = rows(n)
    t0 = time.perf_counter()
    table = pa.table(cols, schema=SCHEMA)
    t1 = time.perf_counter()
    pq.write_table(table, path, compression="zstd")
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    t2 = time.perf_counter()
    print(f"build_s={t1 - t0:.4f} write_s={t2 - t1:.4f} bytes={os.path.getsize(path)}")


if __name__ == "__main__":
    main()
