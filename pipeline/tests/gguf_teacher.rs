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
    let (mut srv, url) = serve(&[
        "--backend".as_ref(),
        "gguf".as_ref(),
        "--max-batch".as_ref(),
        "4".as_ref(),
        "--gguf".as_ref(),
        model.as_os_str(),
        "--served-model-name".as_ref(),
        "smollm2".as_ref(),
    ]);

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
