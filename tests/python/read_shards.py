#!/usr/bin/env python3
"""Open a stepwise shard directory with the tools dataset builders use, with no help from stepwise.

Checks, with pyarrow, pandas and DuckDB (each when installed; pyarrow is required):
the columns and their types, the footer's schema version, and the row counts against _manifest.json.
Exits non-zero with a message on any mismatch.

  read_shards.py SHARD_DIR --rows N [--reasoning R] [--logprob-tokens T] [--require duckdb,pandas]
"""
import argparse
import glob
import json
import os
import sys

EXPECTED = {
    "example_id": "string", "task": "string", "split": "string", "input": "string",
    "choices": "list<item: string>", "gold_label": "string", "teacher_label": "string",
    "rationale": "string", "sample_index": "uint32", "vote_share": "float", "agrees_with_gold": "bool",
    "rationalized": "bool", "teacher_model": "string", "prompt_template": "string", "prompt_hash": "string",
    "temperature": "float", "max_tokens": "uint32", "seed": "int64", "prompt_tokens": "uint32",
    "completion_tokens": "uint32", "latency_ms": "uint32", "finish_reason": "string",
    "created_at": "timestamp[ms, tz=UTC]", "raw_completion": "string",
    "top_logprobs": "list<item: struct<token: string not null, logprob: float not null, "
    "top_logprobs: list<item: struct<token: string not null, logprob: float not null> not null> not null> not null>",
    "reasoning": "string", "reasoning_tokens": "uint32",
}


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--reasoning", type=int, help="rows expected to carry a reasoning trace")
    p.add_argument("--logprob-tokens", type=int, help="completion tokens expected in top_logprobs, all rows together")
    p.add_argument("--require", default="", help="comma-separated readers that must be installed (duckdb, pandas)")
    a = p.parse_args()
    required = {r for r in a.require.split(",") if r}

    import pyarrow.parquet as pq

    manifest = json.load(open(os.path.join(a.dir, "_manifest.json")))
    files = sorted(glob.glob(os.path.join(a.dir, "part-*.parquet")))
    listed = [os.path.join(a.dir, s["file"]) for s in manifest["shards"]]
    if sorted(listed) != files:
        fail(f"part files {files} differ from the manifest's {listed}")
    if manifest["total_rows"] != a.rows:
        fail(f"manifest total_rows {manifest['total_rows']} != expected {a.rows}")

    for s in manifest["shards"]:
        pf = pq.ParquetFile(os.path.join(a.dir, s["file"]))
        md = pf.metadata.metadata or {}
        if md.get(b"stepwise.schema_version") != b"2":
            fail(f"{s['file']}: footer schema version {md.get(b'stepwise.schema_version')!r}")
        if pf.metadata.num_rows != s["rows"]:
            fail(f"{s['file']}: {pf.metadata.num_rows} rows, manifest says {s['rows']}")

    # Point pyarrow at the directory itself: the sidecar files start with "_", which it skips.
    table = pq.read_table(a.dir)
    got = {f.name: str(f.type) for f in table.schema}
    for name, typ in EXPECTED.items():
        if got.get(name) != typ:
            fail(f"pyarrow: column {name} has type {got.get(name)}, expected {typ}")
    if table.num_rows != a.rows:
        fail(f"pyarrow read {table.num_rows} rows, expected {a.rows}")
    keys = set(zip(table.column("example_id").to_pylist(), table.column("sample_index").to_pylist()))
    if len(keys) != a.rows:
        fail(f"pyarrow: {a.rows - len(keys)} duplicate (example_id, sample_index) keys")
    if a.reasoning is not None:
        n = table.num_rows - table.column("reasoning").null_count
        if n != a.reasoning:
            fail(f"pyarrow: {n} rows with reasoning, expected {a.reasoning}")
    if a.logprob_tokens is not None:
        lps = [t for v in table.column("top_logprobs").to_pylist() if v for t in v]
        if len(lps) != a.logprob_tokens or not all(t["top_logprobs"][0]["token"] == t["token"] for t in lps):
            fail(f"pyarrow: {len(lps)} logprob tokens (expected {a.logprob_tokens}) or alternatives not in order")
    print(f"pyarrow {table.num_rows} rows, {len(got)} columns: ok")

    try:
        import pandas  # noqa: F401
        df = pandas.read_parquet(a.dir)
        if len(df) != a.rows or df["rationale"].isna().any():
            fail("pandas: wrong row count or null rationale")
        print(f"pandas {len(df)} rows: ok")
    except ImportError:
        if "pandas" in required:
            fail("pandas is required but not installed")
        print("pandas not installed: skipped")

    try:
        import duckdb
        pattern = os.path.join(a.dir, "part-*.parquet")
        n, agree = duckdb.connect().execute(
            f"select count(*), count(*) filter (where agrees_with_gold) from read_parquet('{pattern}')"
        ).fetchone()
        if n != a.rows:
            fail(f"duckdb counted {n} rows, expected {a.rows}")
        if a.logprob_tokens is not None:
            (k,) = duckdb.connect().execute(
                f"select count(*) from (select unnest(top_logprobs) as t from read_parquet('{pattern}'))"
                " where t.logprob <= 0 and len(t.top_logprobs) = 2"
            ).fetchone()
            if k != a.logprob_tokens:
                fail(f"duckdb unnested {k} logprob tokens, expected {a.logprob_tokens}")
        print(f"duckdb {n} rows ({agree} agree with gold): ok")
    except ImportError:
        if "duckdb" in required:
            fail("duckdb is required but not installed")
        print("duckdb not installed: skipped")


if __name__ == "__main__":
    main()
