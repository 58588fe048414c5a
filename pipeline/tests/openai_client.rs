//! The official `openai` Python client talks to `stepwise teacher serve`.

use std::process::Command;

mod common;
use common::{in_ci, python, serve};

const CLIENT: &str = r#"
import sys
from openai import OpenAI
c = OpenAI(base_url=sys.argv[1], api_key="not-needed", max_retries=0)
r = c.chat.completions.create(model="solver", messages=[
    {"role": "system", "content": "Reason step by step."},
    {"role": "user", "content": sys.argv[2]}], max_tokens=256, temperature=0, n=2)
assert r.object == "chat.completion", r.object
assert len(r.choices) == 2 and r.choices[0].finish_reason == "stop", r.choices
assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
print(r.choices[0].message.content)
"#;

#[test]
fn the_openai_python_client_gets_a_well_formed_completion() {
    let py = python();
    let has_openai = py.exists()
        && Command::new(&py)
            .args(["-c", "import openai"])
            .status()
            .is_ok_and(|s| s.success());
    if !has_openai {
        assert!(
            !in_ci(),
            "{} with the openai package is missing: run scripts/setup-data.sh",
            py.display()
        );
        eprintln!("SKIPPED: no openai package; run scripts/setup-data.sh");
        return;
    }
    let (mut srv, url) = serve::<&str>(&[]);
    let q = "Ann has 12 apples. Ann buys 5 more apples. How many apples does Ann have now?";
    let out = Command::new(&py).args(["-c", CLIENT, &url, q]).output().unwrap();
    let _ = srv.kill();
    let _ = srv.wait();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("12 + 5 = 17") && text.contains("So the answer is 17."),
        "{text}"
    );
}
