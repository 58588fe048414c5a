//! The official `openai` Python client talks to `stepwise teacher serve` as
//! users call it: `tests/python/openai_conformance.py` sends each request
//! shape (only `model` and `messages`, content parts, `max_completion_tokens`,
//! streaming, an unknown model, bad requests, the models routes) to the
//! solver, the mimic (behind an API key) and the gguf backend; and
//! `tests/python/openai_batches.py` drives the Files and Batch APIs.

use std::ffi::OsStr;
use std::process::{Child, Command};

mod common;
use common::{in_ci, python, root, serve};

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

/// The venv's Python with `openai`, or `None` (a skip outside CI, a failure in it).
fn python_with_openai() -> Option<std::path::PathBuf> {
    let py = python();
    let ok = py.exists()
        && Command::new(&py)
            .args(["-c", "import openai, httpx"])
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            !in_ci(),
            "{} with the openai package is missing: run scripts/setup-data.sh",
            py.display()
        );
        eprintln!("SKIPPED: no openai package; run scripts/setup-data.sh");
    }
    ok.then_some(py)
}

/// Stops the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the conformance script against a server started with `serve_args`
/// (and `key` in its environment as `STEPWISE_TEST_KEY`, when given).
fn conformance(serve_args: &[&OsStr], model: &str, key: Option<&str>, extra: &[&str]) {
    let Some(py) = python_with_openai() else { return };
    let mut args: Vec<&OsStr> = serve_args.to_vec();
    if key.is_some() {
        args.extend([OsStr::new("--api-key-env"), OsStr::new("STEPWISE_TEST_KEY")]);
    }
    // The key reaches the server through its environment, never its arguments.
    let (child, url) = common::serve_with_env(&args, key.map(|k| ("STEPWISE_TEST_KEY", k)));
    let _server = Server(child);
    let mut cmd = Command::new(&py);
    cmd.arg(root().join("tests/python/openai_conformance.py"))
        .args([url.as_str(), model])
        .args(extra);
    if let Some(k) = key {
        cmd.env("STEPWISE_TEST_KEY", k);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "{text}");
    assert!(text.contains("checks passed:") && !text.contains("FAIL "), "{text}");
}

#[test]
fn the_openai_python_client_gets_a_well_formed_completion() {
    let Some(py) = python_with_openai() else { return };
    let (srv, url) = serve::<&str>(&[]);
    let _server = Server(srv);
    let q = "Ann has 12 apples. Ann buys 5 more apples. How many apples does Ann have now?";
    let out = Command::new(&py).args(["-c", CLIENT, &url, q]).output().unwrap();
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

#[test]
fn the_solver_accepts_every_request_shape_the_openai_client_sends() {
    conformance(&[], "solver", None, &[]);
}

#[test]
fn the_mimic_behind_an_api_key_accepts_every_request_shape_and_refuses_a_wrong_key() {
    conformance(
        &["--backend".as_ref(), "mimic".as_ref()],
        "mimic",
        Some("sk-local-test-key"),
        &[],
    );
}

#[test]
fn the_gguf_backend_accepts_every_request_shape_and_streams_as_it_decodes() {
    let Some(model) = common::smollm2() else { return };
    conformance(
        &common::gguf_serve_args(&model),
        "smollm2",
        None,
        &["--question", "What is 3 + 4? Answer briefly.", "--max-tokens", "24"],
    );
}

#[test]
fn the_openai_python_client_uploads_creates_polls_downloads_and_cancels_batches() {
    let Some(py) = python_with_openai() else { return };
    let (srv, url) = serve(&["--batch-delay-ms", "300"]);
    let _server = Server(srv);
    let out = Command::new(&py)
        .arg(root().join("tests/python/openai_batches.py"))
        .arg(&url)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("checks passed: batches"), "{text}");
}
