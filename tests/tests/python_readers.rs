//! Shards written by stepwise open in pyarrow, pandas and DuckDB with no help.

mod common;
use std::process::Command;
use stepwise_datasets::shard::{RationaleRow, ShardSet, TokenLogprob, TopLogprob};

fn row(i: usize, s: u32) -> RationaleRow {
    RationaleRow {
        example_id: format!("ex{i}"),
        task: "arith".into(),
        split: Some("train".into()),
        input: format!("Ann has {i} apples. She buys 3 more. How many apples does Ann have now?"),
        choices: (i % 4 == 0).then(|| vec!["yes".into(), "no".into()]),
        gold_label: Some((i + 3).to_string()),
        teacher_label: (i % 9 != 0).then(|| (i + 3).to_string()),
        rationale: format!("{i} + 3 = {}. So the answer is {}.", i + 3, i + 3),
        sample_index: s,
        vote_share: 1.0,
        agrees_with_gold: Some(i % 9 != 0),
        rationalized: false,
        teacher_model: "solver".into(),
        prompt_template: "arith".into(),
        prompt_hash: "h".into(),
        temperature: 0.0,
        max_tokens: 128,
        seed: None,
        prompt_tokens: 50,
        completion_tokens: 20,
        latency_ms: 3,
        finish_reason: "stop".into(),
        created_at: 1_763_900_000_000,
        raw_completion: None,
        // Every fifth row as a reasoning model with logprobs gives it: two
        // tokens, each with two alternatives.
        top_logprobs: (i % 5 == 1).then(|| {
            (0..2)
                .map(|k| TokenLogprob {
                    token: format!("t{k}"),
                    logprob: -0.5 * k as f32,
                    top_logprobs: vec![
                        TopLogprob {
                            token: format!("t{k}"),
                            logprob: -0.5 * k as f32,
                        },
                        TopLogprob {
                            token: "x".into(),
                            logprob: -4.0,
                        },
                    ],
                })
                .collect()
        }),
        reasoning: (i % 5 == 1).then(|| format!("Ann starts with {i}; {i} + 3 = {}.", i + 3)),
        reasoning_tokens: (i % 5 == 1).then_some(12),
    }
}

#[test]
fn pyarrow_pandas_and_duckdb_read_the_shards() {
    let py = common::python();
    if !common::require(&format!("{} with pyarrow", py.display()), py.exists()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut set, _) = ShardSet::open(dir.path(), "cfg", 400).unwrap();
    let rows: Vec<RationaleRow> = (0..500).flat_map(|i| (0..2).map(move |s| row(i, s))).collect();
    for chunk in rows.chunks(64) {
        set.append(chunk.to_vec()).unwrap();
    }
    set.finish().unwrap();
    let require = if common::in_ci() { "duckdb,pandas" } else { "" };
    let out = Command::new(&py)
        .arg(common::root().join("tests/python/read_shards.py"))
        .arg(dir.path())
        .args([
            "--rows",
            "1000",
            "--reasoning",
            "200",
            "--logprob-tokens",
            "400",
            "--require",
            require,
        ])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "{text}");
    assert!(text.contains("pyarrow 1000 rows"), "{text}");
}
