//! `teacher.mode = "batch"` end to end against the local server's Files and
//! Batch APIs: SIGKILLs anywhere in the lifecycle never create a batch twice
//! or lose a row, failed and expired requests are resubmitted and nothing
//! else, and `teach --cancel` leaves no batch running.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use stepwise_datasets::shard::read_dir_rows;
use stepwise_teacher::server::{self, BatchFaults, ServerConfig};

const BIN: &str = env!("CARGO_BIN_EXE_stepwise");

fn config(dir: &Path, url: &str, examples: usize, extra: &str) -> PathBuf {
    let cfg = dir.join("teach.toml");
    std::fs::write(
        &cfg,
        format!(
            "[data]\nexamples = {examples}\nood_examples = 0\n[teacher]\nkind = \"http\"\nbase_url = \"{url}\"\n\
             model = \"solver\"\nmode = \"batch\"\nrows_per_shard = 50\n[teacher.batch]\npoll_s = 0.05\npoll_max_s = 0.2\n{extra}"
        ),
    )
    .unwrap();
    cfg
}

/// The local server with these batch faults.
async fn server_with(batch: BatchFaults) -> server::LocalServer {
    server::start(
        "127.0.0.1:0",
        ServerConfig {
            batch,
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

fn teach(cfg: &Path, run: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.args(["teach", cfg.to_str().unwrap(), "--dir", run.to_str().unwrap()]);
    c
}

/// Every chunk's state file in the run's `batches/`.
fn chunks(run: &Path) -> Vec<serde_json::Value> {
    let Ok(rd) = std::fs::read_dir(run.join("batches")) else {
        return vec![];
    };
    let mut v: Vec<serde_json::Value> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| std::fs::read(&p).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect();
    v.sort_by_key(|c| c["seq"].as_u64());
    v
}

/// The custom ids of the lines of a chunk's file (`input`, `output`, `errors`).
fn ids(run: &Path, chunk: &str, kind: &str) -> Vec<String> {
    let p = run.join("batches").join(format!("{chunk}.{kind}.jsonl"));
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["custom_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// One row per example, each example once.
fn assert_one_row_each(run: &Path, examples: usize) {
    let rows = read_dir_rows(&run.join("shards")).unwrap();
    let mut per: HashMap<(String, u32), usize> = HashMap::new();
    for r in &rows {
        *per.entry(r.key()).or_default() += 1;
    }
    assert_eq!(per.len(), examples, "every example has its row");
    assert!(per.values().all(|c| *c == 1), "no row twice");
    assert_eq!(rows.len(), examples);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sigkills_across_the_batch_lifecycle_create_each_batch_once_and_every_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let srv = server::start(
        "127.0.0.1:0",
        ServerConfig {
            batch: BatchFaults {
                // Long enough that most kills find batches open.
                delay: Duration::from_millis(2000),
                concurrency: 2,
                ..Default::default()
            },
            latency: Duration::from_millis(2),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let examples = 300;
    let cfg = config(dir.path(), &srv.base_url(), examples, "max_requests = 25\n");
    // First a kill at each step where a lost write would matter: between
    // writing a chunk's input and its state, after an upload and after a
    // create, before the journal says so.
    for step in ["batch:planned-input", "batch:uploaded", "batch:created"] {
        let out = teach(&cfg, &run).env("STEPWISE_CRASH_AT", step).output().unwrap();
        assert!(!out.status.success(), "the run stopped at {step}");
    }
    // The last kill left a batch the server made that the journal has not recorded yet.
    assert!(srv.stats.batches_created.load(Ordering::SeqCst) >= 1);
    assert!(
        chunks(&run).iter().any(|c| c["phase"] == "creating"),
        "a chunk killed while creating"
    );
    let mut seed = 0x2545f4914f6cdd1du64;
    let mut phases_seen: HashSet<String> = HashSet::new();
    let mut mid_run = 0;
    for _ in 0..20 {
        let mut child = teach(&cfg, &run)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        tokio::time::sleep(Duration::from_millis(5 + (seed >> 33) % 200)).await;
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        let cs = chunks(&run);
        let open = cs.iter().filter(|c| c["phase"] != "done").count();
        if open > 0 {
            mid_run += 1;
        }
        for c in &cs {
            phases_seen.insert(c["phase"].as_str().unwrap().to_string());
        }
    }
    eprintln!("phases seen at kills: {phases_seen:?}; {mid_run} of 20 kills mid-run");
    assert!(
        mid_run >= 10,
        "only {mid_run} of 20 kills landed while batches were open"
    );
    // And after the batches finish: a kill between a download and the
    // chunk's closing.
    let out = teach(&cfg, &run)
        .env("STEPWISE_CRASH_AT", "batch:downloaded")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the run stopped at batch:downloaded");
    let out = teach(&cfg, &run).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_one_row_each(&run, examples);
    let cs = chunks(&run);
    // 300 requests at 25 a batch: 12 batches needed, and the server made 12.
    assert_eq!(cs.len(), 12, "chunks planned");
    assert!(cs.iter().all(|c| c["phase"] == "done" && c["status"] == "completed"));
    let created = srv.stats.batches_created.load(Ordering::SeqCst);
    assert_eq!(
        created, 12,
        "batches created on the server (a second create for a chunk would count)"
    );
    // Each batch answered its requests once: the server's completions are one per request.
    assert_eq!(srv.stats.completions.load(Ordering::SeqCst), examples as u64);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_expired_requests_are_resubmitted_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let srv = server_with(BatchFaults {
        delay: Duration::from_millis(20),
        fail_fraction: 0.25,
        // Each batch answers at most 30 requests, then expires.
        expire_after: Some(30),
        ..Default::default()
    })
    .await;
    let examples = 200;
    let cfg = config(
        dir.path(),
        &srv.base_url(),
        examples,
        "max_requests = 50\nmax_attempts = 20\n",
    );
    // Two kills on the way, for good measure.
    for wait in [60u64, 150] {
        let mut child = teach(&cfg, &run)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(wait)).await;
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
    }
    let out = teach(&cfg, &run).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_one_row_each(&run, examples);
    let cs = chunks(&run);
    assert!(
        cs.iter().any(|c| c["status"] == "expired"),
        "the fault made batches expire"
    );
    // Every request succeeded exactly once over all the batches, and was
    // submitted again only after it failed or expired.
    let mut succeeded: HashMap<String, usize> = HashMap::new();
    let mut failed_before: HashSet<String> = HashSet::new();
    let mut resubmitted = 0;
    for c in &cs {
        let id = c["id"].as_str().unwrap();
        for r in ids(&run, id, "input") {
            if succeeded.contains_key(&r) {
                panic!("{r} was submitted again after it had succeeded");
            }
            if failed_before.contains(&r) {
                resubmitted += 1;
            }
        }
        for r in ids(&run, id, "output") {
            *succeeded.entry(r).or_default() += 1;
        }
        failed_before.extend(ids(&run, id, "errors"));
    }
    assert_eq!(succeeded.len(), examples);
    assert!(succeeded.values().all(|n| *n == 1), "no request answered twice");
    let submitted: usize = cs.iter().map(|c| c["requests"].as_u64().unwrap() as usize).sum();
    assert_eq!(
        submitted,
        examples + resubmitted,
        "only failed or expired requests went again"
    );
    assert!(resubmitted > 0);
    assert_eq!(
        srv.stats.batches_created.load(Ordering::SeqCst) as usize,
        cs.len(),
        "one batch per chunk"
    );
    eprintln!("{} batches, {resubmitted} requests resubmitted", cs.len());
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_leaves_no_batch_running_and_keeps_the_journal_closed() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let srv = server_with(BatchFaults {
        delay: Duration::from_secs(600),
        ..Default::default()
    })
    .await;
    let cfg = config(dir.path(), &srv.base_url(), 120, "max_requests = 40\n");
    let mut child = teach(&cfg, &run)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while srv.stats.batches_running.load(Ordering::SeqCst) < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the batches were never created"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    let out = teach(&cfg, &run).arg("--cancel").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        srv.stats.batches_running.load(Ordering::SeqCst),
        0,
        "no batch left running"
    );
    assert_eq!(srv.stats.batches_created.load(Ordering::SeqCst), 3);
    let cs = chunks(&run);
    assert_eq!(cs.len(), 3);
    assert!(
        cs.iter().all(|c| c["phase"] == "done" && c["status"] == "cancelled"),
        "{cs:?}"
    );
    assert_eq!(text.matches("cancelled").count(), 3, "{text}");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_a_finished_live_run_to_batch_mode_asks_nothing_again() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let srv = server_with(BatchFaults::default()).await;
    let live = dir.path().join("live.toml");
    std::fs::write(
        &live,
        format!(
            "[data]\nexamples = 60\nood_examples = 0\n[teacher]\nkind = \"http\"\nbase_url = \"{}\"\nmodel = \"solver\"\n",
            srv.base_url()
        ),
    )
    .unwrap();
    let out = teach(&live, &run).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let asked = srv.stats.requests.load(Ordering::SeqCst);
    // The mode is how, not what: the same identity, so the stage is up to date.
    let batch = config(dir.path(), &srv.base_url(), 60, "");
    let out = teach(&batch, &run).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(srv.stats.requests.load(Ordering::SeqCst), asked);
    assert_eq!(srv.stats.batches_created.load(Ordering::SeqCst), 0);
    assert_one_row_each(&run, 60);
    srv.shutdown().await;
}
