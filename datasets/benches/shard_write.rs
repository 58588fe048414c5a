//! Shard writing against pyarrow on the same rows (DESIGN.md section 7).
//!
//! `cargo bench -p stepwise-datasets --bench shard_write [-- ROWS]` writes ROWS
//! (default 1,000,000) rationale rows with stepwise, then runs
//! bench/shard_write_pyarrow.py on the same rows with the project's Python
//! (.venv/bin/python, or $STEPWISE_PYTHON) and prints both and the ratio.
//! Best of three runs each.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;
use stepwise_datasets::shard::{RationaleRow, rows_to_batch, schema, write_shard, writer_properties};

fn row(i: usize) -> RationaleRow {
    let (a, b, c) = (i % 97, i % 13, i % 7);
    let ans = (a + b - c).to_string();
    RationaleRow {
        example_id: format!("ex{i:08}"),
        task: "arith".into(),
        split: Some("train".into()),
        input: format!(
            "Ann has {a} apples. She buys {b} more apples and gives {c} to Ben. How many apples does Ann have now?"
        ),
        choices: None,
        gold_label: Some(ans.clone()),
        teacher_label: Some(ans.clone()),
        rationale: format!(
            "There are {a} apples at the start. {b} more apples are added, so {a} + {b} = {}. {c} apples are taken away, so {} - {c} = {}. So the answer is {ans}.",
            a + b,
            a + b,
            a + b - c
        ),
        sample_index: (i % 4) as u32,
        vote_share: if i % 4 == 0 { 0.75 } else { 1.0 },
        agrees_with_gold: Some(true),
        rationalized: false,
        teacher_model: "qwen2.5-coder-1.5b-instruct".into(),
        prompt_template: "arith-cot-v1".into(),
        prompt_hash: "9f2c4e1ab37d5e08".into(),
        temperature: 0.7,
        max_tokens: 256,
        seed: Some(i as i64),
        prompt_tokens: 100 + (i % 50) as u32,
        completion_tokens: 40 + (i % 30) as u32,
        latency_ms: 200 + (i % 100) as u32,
        finish_reason: "stop".into(),
        created_at: 1_763_900_000_000 + i as i64,
        raw_completion: None,
        top_logprobs: None,
        reasoning: None,
        reasoning_tokens: None,
    }
}

fn best<T>(runs: usize, mut f: impl FnMut() -> (f64, T)) -> (f64, T) {
    let mut out = f();
    for _ in 1..runs {
        let r = f();
        if r.0 < out.0 {
            out = r;
        }
    }
    out
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<RationaleRow> = (0..n).map(row).collect();

    let (build_s, batches) = best(3, || {
        let t = Instant::now();
        let b: Vec<_> = rows.chunks(65_536).map(rows_to_batch).collect();
        (t.elapsed().as_secs_f64(), b)
    });
    let (encode_s, _) = best(3, || {
        let p = dir.path().join("encode-only.parquet");
        let t = Instant::now();
        let f = std::fs::File::create(&p).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(f, schema(), Some(writer_properties())).unwrap();
        batches.iter().for_each(|b| w.write(b).unwrap());
        w.into_inner().unwrap().sync_all().unwrap();
        (t.elapsed().as_secs_f64(), ())
    });
    let (total_s, bytes) = best(3, || {
        let p = dir.path().join("part-00000.parquet");
        let t = Instant::now();
        let info = write_shard(&p, &rows).unwrap();
        (t.elapsed().as_secs_f64(), info.bytes)
    });
    println!("rows                        {n}");
    println!("stepwise rows -> Arrow      {build_s:.3} s");
    println!("stepwise Arrow -> Parquet   {encode_s:.3} s  (zstd, fsync)");
    println!(
        "stepwise write_shard        {total_s:.3} s  ({:.0} rows/s, {bytes} bytes: rows -> Arrow -> Parquet, fsync, rename, sha256)",
        n as f64 / total_s
    );

    let py = std::env::var_os("STEPWISE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv/bin/python"));
    let script = root.join("bench/shard_write_pyarrow.py");
    let (py_best, line) = best(3, || {
        let p = dir.path().join("pyarrow.parquet");
        let out = match Command::new(&py).arg(&script).arg(n.to_string()).arg(&p).output() {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
            Ok(o) => panic!("pyarrow side failed: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => {
                eprintln!("cannot run {} ({e}): run scripts/setup-data.sh first", py.display());
                std::process::exit(0);
            }
        };
        let field = |k: &str| -> f64 {
            out.split_whitespace()
                .find_map(|kv| kv.strip_prefix(k))
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN)
        };
        (field("build_s=") + field("write_s="), out)
    });
    let field = |k: &str| -> f64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    println!("pyarrow lists -> Arrow      {:.3} s", field("build_s="));
    println!(
        "pyarrow Arrow -> Parquet    {:.3} s  (zstd, fsync; {} bytes)",
        field("write_s="),
        field("bytes=") as u64
    );
    println!(
        "ratio, whole write (pyarrow / stepwise; > 1 means stepwise is faster): {:.2}",
        py_best / total_s
    );
    println!(
        "ratio, Arrow -> Parquet only:                                        {:.2}",
        field("write_s=") / encode_s
    );
}
