//! Helpers shared by the CLI tests: `stepwise teacher serve`, and a run's metrics.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// True under CI, where every optional input must be present.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The Python of the project's virtual environment.
pub fn python() -> PathBuf {
    std::env::var_os("STEPWISE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/python"))
}

/// `stepwise teacher serve` on a free loopback port with `extra` arguments;
/// the child and the base URL it prints.
pub fn serve<S: AsRef<OsStr>>(extra: &[S]) -> (Child, String) {
    serve_with_env(extra, None)
}

/// [`serve`] with one more variable in the server's environment.
pub fn serve_with_env<S: AsRef<OsStr>>(extra: &[S], env: Option<(&str, &str)>) -> (Child, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stepwise"));
    cmd.args(["teacher", "serve", "--addr", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    let mut srv = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(srv.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("the server prints its URL: {line:?}"))
        .to_string();
    (srv, url)
}

/// `teacher serve` arguments for the gguf backend on `model`, batches of 4,
/// served as `smollm2`.
pub fn gguf_serve_args(model: &std::path::Path) -> Vec<&OsStr> {
    let mut v: Vec<&OsStr> = ["--backend", "gguf", "--max-batch", "4", "--gguf"]
        .into_iter()
        .map(OsStr::new)
        .collect();
    v.push(model.as_os_str());
    v.extend(["--served-model-name", "smollm2"].map(OsStr::new));
    v
}

/// The registry SmolLM2-135M-Instruct GGUF, or `None` when it is missing
/// (a skip outside CI, a failure in it).
pub fn smollm2() -> Option<PathBuf> {
    let model = root().join("data/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !model.exists() {
        let msg = format!("{} is missing: run scripts/setup-data.sh --full", model.display());
        assert!(!in_ci(), "{msg}");
        eprintln!("SKIPPED: {msg}");
        return None;
    }
    Some(model)
}

/// A finished run's `metrics.json`.
pub fn metrics(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap()
}

/// `model`'s accuracy on `split` in a run's metrics.
pub fn accuracy(m: &serde_json::Value, model: &str, split: &str) -> f64 {
    m["scores"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["model"] == model && s["split"] == split)
        .unwrap_or_else(|| panic!("no score for {model} on {split}"))["accuracy"]["value"]
        .as_f64()
        .unwrap()
}

/// `moto_server` (PyPI `moto[server]`) on a free port, with a bucket.
pub struct Moto {
    child: Child,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn moto_server() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("STEPWISE_MOTO_SERVER").map(PathBuf::from),
        Some(root().join(".venv/bin/moto_server")),
    ];
    let found = candidates.into_iter().flatten().find(|p| p.exists());
    if found.is_none() {
        let msg = "moto_server is missing: run scripts/setup-data.sh --full (or set STEPWISE_MOTO_SERVER)";
        assert!(!in_ci(), "{msg}");
        eprintln!("SKIPPED: {msg}");
    }
    found
}

pub fn start_moto(bin: &Path, bucket: &str) -> (Moto, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let t = Instant::now();
    loop {
        // CreateBucket: PUT /<bucket>.
        if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let req = format!(
                "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            c.write_all(req.as_bytes()).unwrap();
            let mut resp = String::new();
            let _ = c.read_to_string(&mut resp);
            assert!(resp.starts_with("HTTP/1.1 200"), "CreateBucket: {resp}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "moto_server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    (Moto { child }, endpoint)
}

pub fn s3_env(endpoint: &str) -> Vec<(String, String)> {
    [
        ("AWS_ACCESS_KEY_ID", "stepwise-test-key"),
        ("AWS_SECRET_ACCESS_KEY", "stepwise-secret-never-written"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_ENDPOINT", endpoint),
        ("AWS_ALLOW_HTTP", "true"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}
