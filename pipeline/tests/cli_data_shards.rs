//! The `stepwise data` and `stepwise shards` commands, run as a user would.

use std::path::Path;
use std::process::{Command, Output};
use stepwise_datasets::shard::{RationaleRow, ShardSet};

fn stepwise(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = stepwise(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "stepwise {args:?} failed:\n{text}");
    text
}

fn row(i: usize) -> RationaleRow {
    RationaleRow {
        example_id: format!("ex{i}"),
        task: "arith".into(),
        split: Some("train".into()),
        input: format!("{i} + 1?"),
        choices: None,
        gold_label: Some((i + 1).to_string()),
        teacher_label: Some((i + 1).to_string()),
        rationale: format!("{i} + 1 = {}. So the answer is {}.", i + 1, i + 1),
        sample_index: 0,
        vote_share: 1.0,
        agrees_with_gold: Some(i % 4 != 0),
        rationalized: false,
        teacher_model: "solver".into(),
        prompt_template: "arith".into(),
        prompt_hash: "h".into(),
        temperature: 0.0,
        max_tokens: 64,
        seed: None,
        prompt_tokens: 10,
        completion_tokens: 5,
        latency_ms: 1,
        finish_reason: "stop".into(),
        created_at: 0,
        raw_completion: None,
        top_logprobs: None,
        reasoning: None,
        reasoning_tokens: None,
    }
}

fn shards(dir: &Path, range: std::ops::Range<usize>, cfg: &str) {
    let (mut set, _) = ShardSet::open(dir, cfg, 30).unwrap();
    set.append(range.map(row).collect()).unwrap();
    set.finish().unwrap();
}

#[test]
fn data_generate_split_stats_and_import() {
    let t = tempfile::tempdir().unwrap();
    let ex = t.path().join("ex");
    let ex_s = ex.to_str().unwrap();
    let out = ok(&[
        "data", "generate", "--out", ex_s, "--count", "500", "--ood", "50", "--seed", "3",
    ]);
    assert!(out.contains("train 350") && out.contains("test_ood 50"), "{out}");
    let stats = ok(&["data", "stats", ex_s]);
    assert!(
        stats.contains("550 examples") && stats.contains("arith:farm"),
        "{stats}"
    );
    let out = ok(&["data", "split", ex_s, "--val", "0.2", "--test", "0.2"]);
    assert!(out.contains("train 300") && out.contains("val 100"), "{out}");

    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/tests/fixtures");
    let imp = t.path().join("imp");
    let out = ok(&[
        "data",
        "import",
        fixtures.join("esnli.csv").to_str().unwrap(),
        "--format",
        "esnli",
        "--out",
        imp.to_str().unwrap(),
        "--val",
        "0",
        "--test",
        "0.34",
    ]);
    assert!(out.contains("train 2") && out.contains("test 1"), "{out}");
    // A bad record stops the import and names the file and row; nothing is written.
    let bad = t.path().join("bad");
    let o = stepwise(&[
        "data",
        "import",
        fixtures.join("bad_gsm8k.jsonl").to_str().unwrap(),
        "--format",
        "gsm8k",
        "--out",
        bad.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("bad_gsm8k.jsonl, row 2"), "{err}");
    assert!(!bad.exists());
    let o = stepwise(&[
        "data",
        "import",
        "x.jsonl",
        "--map",
        "input=q",
        "--out",
        bad.to_str().unwrap(),
    ]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("label"));
}

#[test]
fn shards_merge_validate_stats_head_export() {
    let t = tempfile::tempdir().unwrap();
    let (a, b, m) = (t.path().join("a"), t.path().join("b"), t.path().join("merged"));
    shards(&a, 0..50, "cfg-a");
    shards(&b, 40..100, "cfg-b");
    let out = ok(&[
        "shards",
        "merge",
        "--out",
        m.to_str().unwrap(),
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    assert!(out.contains("100 kept, 10 duplicates dropped"), "{out}");
    assert!(ok(&["shards", "validate", m.to_str().unwrap()]).contains("ok: 1 shards, 100 rows"));
    let stats = ok(&["shards", "stats", m.to_str().unwrap()]);
    assert!(stats.contains("agree with gold   75/100"), "{stats}");
    let head = ok(&["shards", "head", m.to_str().unwrap(), "-n", "2"]);
    assert_eq!(head.matches("\"example_id\"").count(), 2);
    let jl = t.path().join("rows.jsonl");
    ok(&["shards", "export", m.to_str().unwrap(), "--jsonl", jl.to_str().unwrap()]);
    let text = std::fs::read_to_string(&jl).unwrap();
    assert_eq!(text.lines().count(), 100);
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["example_id"], "ex0");

    // Corrupt a shard: validate fails, naming the file.
    let part = a.join("part-00000.parquet");
    let mut bytes = std::fs::read(&part).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&part, bytes).unwrap();
    let o = stepwise(&["shards", "validate", a.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("part-00000.parquet") && err.contains("sha256"),
        "{err}"
    );
}
