//! `stepwise teach` killed with SIGKILL at random points, 20 times, then resumed:
//! every example ends with exactly one row per sample, and the only requests
//! sent twice are ones that were in flight at a kill.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;
use stepwise_datasets::shard::read_dir_rows;
use stepwise_teacher::server::{self, ServerConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sigkills_then_resume_give_exactly_one_row_per_sample() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let bin = env!("CARGO_BIN_EXE_stepwise");
    let srv = server::start(
        "127.0.0.1:0",
        ServerConfig {
            latency: Duration::from_millis(50),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (concurrency, n, kills) = (8usize, 2u32, 20usize);
    // The same plan as `stepwise run`: the data stage, then the teach stage.
    let cfg = dir.path().join("teach.toml");
    std::fs::write(
        &cfg,
        format!(
            "[data]\nexamples = 400\nood_examples = 0\n[teacher]\nkind = \"http\"\nbase_url = \"{}\"\nmodel = \"solver\"\n\
             concurrency = {concurrency}\nn = {n}\nrows_per_shard = 37\n",
            srv.base_url()
        ),
    )
    .unwrap();
    let args = |dry: bool| {
        let mut v = vec![
            "teach".to_string(),
            cfg.to_str().unwrap().into(),
            "--dir".into(),
            run.to_str().unwrap().into(),
        ];
        if dry {
            v.push("--dry-run".into());
        }
        v
    };
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut mid_run = 0;
    for _ in 0..kills {
        let mut child = Command::new(bin)
            .args(args(false))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let wait_ms = 30 + (seed >> 33) % 150;
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        // SIGKILL: no destructor, no flush, no signal handler runs.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        let answered = srv.stats.completions.load(Ordering::SeqCst) as usize;
        if answered > 0 && answered < 400 {
            mid_run += 1;
        }
    }
    // The kills landed mid-run: after most of them some work was done, not all of it.
    assert!(mid_run >= 10, "only {mid_run} of {kills} kills landed mid-run");
    let out = Command::new(bin).args(args(false)).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows = read_dir_rows(&run.join("shards")).unwrap();
    let mut per: HashMap<(String, u32), usize> = HashMap::new();
    for r in &rows {
        *per.entry(r.key()).or_default() += 1;
    }
    let examples = 400;
    assert_eq!(
        per.len(),
        examples * n as usize,
        "every sample of every example present"
    );
    assert!(per.values().all(|c| *c == 1), "no duplicates");
    assert_eq!(rows.len(), examples * n as usize);
    let answered = srv.stats.completions.load(Ordering::SeqCst) as usize;
    let resent = answered - examples;
    eprintln!("server answered {answered} requests for {examples} examples: {resent} re-sent over {kills} kills");
    assert!(
        resent <= kills * concurrency,
        "{resent} re-sent requests, more than were in flight at {kills} kills"
    );
    let v = Command::new(bin)
        .args(["shards", "validate", run.join("shards").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    srv.shutdown().await;
}
