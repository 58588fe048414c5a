//! The shipped Slurm recipe (`deploy/slurm/submit.sh`) on a real Slurm: a
//! 4-task teach array against the solver teacher, then the dependent
//! finalize job, into a `file://` root and into an S3 bucket served by
//! `moto_server`. The manifest lists every example exactly once.
//!
//! Needs a running Slurm (`scripts/slurm-local.sh start`, as `.ci/run`
//! does): skipped without one, a failure under CI.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use stepwise_datasets::shard::{read_dir_rows, validate_dir};
use stepwise_teacher::server::{self, ServerConfig};

fn slurm_up() -> bool {
    let up = Command::new("sinfo")
        .args(["-h", "-o", "%T"])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty());
    if !up {
        let msg = "no Slurm answers sinfo: run scripts/slurm-local.sh install && scripts/slurm-local.sh start";
        assert!(!common::in_ci(), "{msg}");
        eprintln!("SKIPPED: {msg}");
    }
    up
}

/// A job's state, from squeue (completed jobs stay listed for MinJobAge).
fn job_state(id: &str) -> String {
    let o = Command::new("squeue")
        .args(["-h", "-t", "all", "-j", id, "-o", "%T"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// `submit.sh` with 4 tasks into `store`, waits for the finalize job, and
/// checks the pulled manifest.
fn submit_and_check(work: &Path, config: &Path, store: &str, env: &[(String, String)]) {
    let submit = common::root().join("deploy/slurm/submit.sh");
    let o = Command::new("bash")
        .arg(&submit)
        .args([config.to_str().unwrap(), store, "4", "4"])
        .env("STEPWISE", env!("CARGO_BIN_EXE_stepwise"))
        .env("SBATCH_OPTS", format!("--chdir={}", work.display()))
        .env("STEPWISE_SCRATCH", work.join("scratch"))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(work)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{out}");
    let final_job = out
        .split("finalize job ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no finalize job id: {out}"))
        .to_string();
    let t = Instant::now();
    loop {
        let state = job_state(&final_job);
        if ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"].contains(&state.as_str()) {
            let log =
                std::fs::read_to_string(work.join(format!("stepwise-finalize-{final_job}.out"))).unwrap_or_default();
            assert_eq!(state, "COMPLETED", "finalize: {log}");
            assert!(log.contains("80 rows of 80 examples"), "{log}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "finalize job {final_job} still {state}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let pulled = work.join("pulled");
    let o = Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args(["shards", "pull", store, "--out", pulled.to_str().unwrap()])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(validate_dir(&pulled).unwrap().is_empty());
    let rows = read_dir_rows(&pulled).unwrap();
    let mut per: HashMap<&str, usize> = HashMap::new();
    for r in &rows {
        *per.entry(r.example_id.as_str()).or_default() += 1;
    }
    assert_eq!(per.len(), 80);
    assert!(per.values().all(|n| *n == 1));
    // Four array tasks, one attempt each.
    let logs = std::fs::read_dir(work)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("stepwise-teach-"))
        .count();
    assert_eq!(logs, 4, "one log per array task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slurm_array_and_its_finalize_job_list_every_example_once() {
    if !slurm_up() {
        return;
    }
    let srv = server::start(
        "127.0.0.1:0",
        ServerConfig {
            latency: Duration::from_millis(10),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("teach.toml");
    std::fs::write(
        &config,
        format!(
            "[data]\nexamples = 80\nood_examples = 0\n[teacher]\nkind = \"http\"\nbase_url = \"{}\"\nmodel = \"solver\"\nconcurrency = 4\n",
            srv.base_url()
        ),
    )
    .unwrap();
    let file_work = dir.path().join("file");
    std::fs::create_dir_all(&file_work).unwrap();
    let root = format!("file://{}", dir.path().join("root").display());
    let cfg = config.clone();
    tokio::task::spawn_blocking(move || submit_and_check(&file_work, &cfg, &root, &[]))
        .await
        .unwrap();

    let moto = common::moto_server();
    let Some(moto) = moto else { return };
    let (_moto, endpoint) = common::start_moto(&moto, "slurm-runs");
    let s3_work = dir.path().join("s3");
    std::fs::create_dir_all(&s3_work).unwrap();
    let env = common::s3_env(&endpoint);
    tokio::task::spawn_blocking(move || submit_and_check(&s3_work, &config, "s3://slurm-runs/arith", &env))
        .await
        .unwrap();
}
