//! A teacher that is not there fails the run at once, naming the URL,
//! before any stage work; one that goes away mid-run stops it within
//! seconds, keeping every row already written, instead of retrying each
//! of thousands of requests on its own.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use stepwise_datasets::shard::read_dir_rows;
use stepwise_teacher::server::{self, ServerConfig};

const BIN: &str = env!("CARGO_BIN_EXE_stepwise");

fn config(dir: &Path, url: &str, model: &str, examples: usize) -> std::path::PathBuf {
    let cfg = dir.join("teach.toml");
    std::fs::write(
        &cfg,
        format!(
            "[data]\nexamples = {examples}\nood_examples = 0\n[teacher]\nkind = \"http\"\nbase_url = \"{url}\"\n\
             model = \"{model}\"\nconcurrency = 8\nrows_per_shard = 50\n"
        ),
    )
    .unwrap();
    cfg
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn a_closed_port_fails_within_seconds_naming_the_url_before_any_stage_work() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let url = format!("http://127.0.0.1:{}/v1", closed_port());
    let cfg = config(dir.path(), &url, "solver", 100);
    let start = Instant::now();
    let out = Command::new(BIN)
        .args(["teach", cfg.to_str().unwrap(), "--dir", run.to_str().unwrap()])
        .output()
        .unwrap();
    let took = start.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(err.contains(&url) && err.contains("not reachable"), "{err}");
    assert!(!run.join("examples").exists(), "the data stage did not run");
    assert!(!run.join("shards").exists(), "the teach stage did not run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_model_fails_before_any_stage_work_and_names_what_the_server_has() {
    let srv = server::start("127.0.0.1:0", ServerConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let cfg = config(dir.path(), &srv.base_url(), "gpt-5-typo", 100);
    let out = Command::new(BIN)
        .args(["teach", cfg.to_str().unwrap(), "--dir", run.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("teacher.model = \"gpt-5-typo\"") && err.contains("solver"),
        "{err}"
    );
    assert!(!run.join("shards").exists());
    assert_eq!(
        srv.stats.requests.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no chat request sent"
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teacher_gone_mid_run_stops_the_run_within_seconds_and_keeps_its_rows() {
    let srv = server::start(
        "127.0.0.1:0",
        ServerConfig {
            latency: Duration::from_millis(20),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let cfg = config(dir.path(), &srv.base_url(), "solver", 3000);
    let mut child = Command::new(BIN)
        .args(["teach", cfg.to_str().unwrap(), "--dir", run.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stats = srv.stats.clone();
    let start = Instant::now();
    while stats.completions.load(std::sync::atomic::Ordering::SeqCst) < 200 {
        assert!(start.elapsed() < Duration::from_secs(30), "the run never got going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    srv.shutdown().await;
    let gone = Instant::now();
    // Without the breaker each of ~2,800 requests would retry 6 times with backoff up to 30 s.
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            gone.elapsed() < Duration::from_secs(30),
            "the run kept retrying a dead teacher"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = gone.elapsed();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    eprintln!("stopped {took:?} after the teacher went");
    assert!(!status.success());
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(
        err.contains("unreachable") && err.contains("failed to connect"),
        "{err}"
    );
    let rows = read_dir_rows(&run.join("shards")).unwrap();
    assert!(rows.len() >= 150, "the rows answered before are kept: {}", rows.len());
}
