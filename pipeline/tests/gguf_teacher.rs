//! `stepwise teacher serve --backend gguf` serves the registry-shipped
//! SmolLM2-135M-Instruct on CPU: the openai Python client gets well-formed
//! sampled completions, and `stepwise teacher probe` gets a GSM8K-style
//! rationale whose answer parses.

use std::process::Command;

mod common;
use common::{in_ci, python, serve};

const CLIENT: &str = r#"
import sys
from openai import OpenAI
c = OpenAI(base_url=sys.argv[1], api_key="not-needed", max_retries=0)
r = c.chat.completions.create(model="smollm2", messages=[
    {"role": "user", "content": "Name three colours."}],
    max_tokens=24, temperature=0.8, seed=7, n=2, stop=["\n\n"])
assert r.object == "chat.completion", r.object
assert len(r.choices) == 2, r.choices
for ch in r.choices:
    assert ch.finish_reason in ("stop", "length"), ch.finish_reason
    assert ch.message.role == "assistant" and ch.message.content.strip(), ch
    assert "\n\n" not in ch.message.content, ch.message.content
assert 0 < r.usage.completion_tokens <= 48, r.usage
assert r.usage.prompt_tokens > 10, r.usage
print(repr([ch.message.content for ch in r.choices]))
"#;

#[test]
fn the_gguf_backend_serves_smollm2_to_real_clients() {
    let Some(model) = common::smollm2() else { return };
    let (mut srv, url) = serve(&common::gguf_serve_args(&model));

    let q = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. \
             How many clips did Natalia sell altogether in April and May?";
    let probe = Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args([
            "teacher",
            "probe",
            "--base-url",
            &url,
            "--model",
            "smollm2",
            "--max-tokens",
            "160",
            "--question",
            q,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&probe.stdout).to_string();
    eprintln!("{text}");
    assert!(probe.status.success(), "{}", String::from_utf8_lossy(&probe.stderr));
    let answer = text
        .lines()
        .find_map(|l| l.strip_prefix("answer:"))
        .expect("probe prints the answer")
        .trim();
    assert!(
        stepwise_datasets::answer::first_number(answer).is_some(),
        "the rationale states a numeric answer: {text}"
    );
    assert!(
        !text.contains("\nQ:"),
        "the few-shot stop sequence ends the completion: {text}"
    );

    let py = python();
    let out = Command::new(&py).args(["-c", CLIENT, &url]).output();
    let _ = srv.kill();
    let _ = srv.wait();
    match out {
        Ok(o) if o.status.success() => eprintln!("{}", String::from_utf8_lossy(&o.stdout)),
        Ok(o) if !in_ci() && String::from_utf8_lossy(&o.stderr).contains("No module named") => {
            eprintln!("SKIPPED the openai client: run scripts/setup-data.sh")
        }
        Ok(o) => panic!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => assert!(!in_ci(), "{}: {e}", py.display()),
    }
}

/// Logprobs from the gguf backend's own logits reach the shards' typed
/// `top_logprobs` column: one entry per token of the rationale, the chosen
/// token first among its alternatives (greedy), every log-probability ≤ 0.
#[test]
fn gguf_logprobs_round_trip_through_the_shards() {
    let Some(model) = common::smollm2() else { return };
    let (mut srv, url) = serve(&common::gguf_serve_args(&model));
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("t.toml");
    std::fs::write(
        &cfg,
        format!(
            "[data]\nexamples = 8\nood_examples = 0\nlimit = 0\n[teacher]\nkind = \"http\"\nbase_url = \"{url}\"\n\
             model = \"smollm2\"\nmax_tokens = 16\ntop_logprobs = 3\nconcurrency = 4\n"
        ),
    )
    .unwrap();
    let run = dir.path().join("run");
    let out = Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args(["teach", cfg.to_str().unwrap(), "--dir", run.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = srv.kill();
    let _ = srv.wait();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows = stepwise_datasets::shard::read_dir_rows(&run.join("shards")).unwrap();
    assert_eq!(rows.len(), 8);
    for r in &rows {
        let lp = r.top_logprobs.as_ref().expect("logprobs stored");
        assert!(!lp.is_empty() && lp.len() <= 16, "{}", lp.len());
        let joined: String = lp.iter().map(|t| t.token.as_str()).collect();
        assert!(
            joined.starts_with(r.rationale.trim_end()) || r.rationale.starts_with(joined.trim_end()),
            "tokens {joined:?} spell the rationale {:?}",
            r.rationale
        );
        for t in lp {
            assert_eq!(t.top_logprobs.len(), 3);
            assert!(t.logprob <= 0.0 && t.top_logprobs.iter().all(|a| a.logprob <= 0.0));
            assert_eq!(
                t.top_logprobs[0].token, t.token,
                "greedy: the chosen token is the likeliest"
            );
            assert!((t.top_logprobs[0].logprob - t.logprob).abs() < 1e-4);
            assert!(t.top_logprobs.windows(2).all(|w| w[0].logprob >= w[1].logprob));
        }
    }
}
