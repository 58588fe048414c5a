//! The teach stage as array tasks over storage by URL (`stepwise teach plan`,
//! `teach --store URL --task I`, `teach finalize`, `shards gc|pull`), with
//! the faults a scheduler produces: a worker SIGKILLed and resubmitted, the
//! same index twice at once, a worker dead between upload and commit,
//! finalize twice and with an index missing. In each: no duplicate row, no
//! lost row, and no request asked again beyond those in flight. The same
//! protocol runs on `file://` and on S3 served by `moto_server`.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use stepwise_datasets::shard::{read_dir_rows, validate_dir};
use stepwise_teacher::server::{self, LocalServer, ServerConfig};

const BIN: &str = env!("CARGO_BIN_EXE_stepwise");

/// A root, its config and scratch, and the solver teacher on loopback.
struct Setup {
    dir: tempfile::TempDir,
    store: String,
    config: PathBuf,
    srv: LocalServer,
    env: Vec<(String, String)>,
}

impl Setup {
    async fn new(examples: usize, latency_ms: u64) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let store = format!("file://{}", dir.path().join("root").display());
        Setup::with_store(dir, store, vec![], examples, latency_ms).await
    }

    async fn with_store(
        dir: tempfile::TempDir,
        store: String,
        env: Vec<(String, String)>,
        examples: usize,
        latency_ms: u64,
    ) -> Setup {
        let srv = server::start(
            "127.0.0.1:0",
            ServerConfig {
                latency: Duration::from_millis(latency_ms),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let config = dir.path().join("teach.toml");
        write_config(&config, &srv.base_url(), examples, 0.0);
        Setup {
            dir,
            store,
            config,
            srv,
            env,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("STEPWISE_SCRATCH", self.path("default-scratch"));
        c
    }

    fn plan(&self, tasks: u32) -> Output {
        let run = self.path("plan-run");
        self.cmd(&[
            "teach",
            "plan",
            self.config.to_str().unwrap(),
            "--dir",
            run.to_str().unwrap(),
            "--store",
            &self.store,
            "--tasks",
            &tasks.to_string(),
        ])
        .output()
        .unwrap()
    }

    fn worker(&self, task: u32, scratch: &str) -> Command {
        let scratch = self.path(scratch);
        let mut c = self.cmd(&[
            "teach",
            self.config.to_str().unwrap(),
            "--store",
            &self.store,
            "--task",
            &task.to_string(),
            "--scratch",
            scratch.to_str().unwrap(),
        ]);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    }

    fn work(&self, task: u32) -> Output {
        self.worker(task, "scratch").output().unwrap()
    }

    fn finalize(&self) -> Output {
        self.cmd(&["teach", "finalize", "--store", &self.store])
            .output()
            .unwrap()
    }

    fn completions(&self) -> u64 {
        self.srv.stats.completions.load(Ordering::SeqCst)
    }

    /// The finalized rows, through `shards pull` into a local directory.
    fn pulled_rows(&self, into: &str) -> Vec<stepwise_datasets::RationaleRow> {
        let out = self.path(into);
        let o = self
            .cmd(&["shards", "pull", &self.store, "--out", out.to_str().unwrap()])
            .output()
            .unwrap();
        ok(&o);
        assert!(validate_dir(&out).unwrap().is_empty());
        read_dir_rows(&out).unwrap()
    }

    fn plan_examples(&self) -> usize {
        let plan = std::fs::read(self.local_root().join("plan/teach.json")).unwrap();
        let plan: serde_json::Value = serde_json::from_slice(&plan).unwrap();
        plan["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["example_ids"].as_array().unwrap().len())
            .sum()
    }

    fn slice_len(&self, task: usize) -> usize {
        let plan = std::fs::read(self.local_root().join("plan/teach.json")).unwrap();
        let plan: serde_json::Value = serde_json::from_slice(&plan).unwrap();
        plan["tasks"][task]["example_ids"].as_array().unwrap().len()
    }

    fn local_root(&self) -> PathBuf {
        PathBuf::from(self.store.trim_start_matches("file://"))
    }
}

fn write_config(path: &Path, base_url: &str, examples: usize, temperature: f32) {
    std::fs::write(
        path,
        format!(
            "[data]\nexamples = {examples}\nood_examples = 0\n[teacher]\nkind = \"http\"\nbase_url = \"{base_url}\"\n\
             model = \"solver\"\nconcurrency = 4\nrows_per_shard = 7\ntemperature = {temperature}\n"
        ),
    )
    .unwrap();
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", text(o));
    text(o)
}

fn exit_code(o: &Output) -> Option<i32> {
    o.status.code()
}

/// Every example of the plan exactly once.
fn assert_exactly_once(rows: &[stepwise_datasets::RationaleRow], examples: usize) {
    let mut per: HashMap<&str, usize> = HashMap::new();
    for r in rows {
        *per.entry(r.example_id.as_str()).or_default() += 1;
    }
    assert_eq!(per.len(), examples, "examples with a row");
    assert!(per.values().all(|n| *n == 1), "a row twice: {per:?}");
    assert_eq!(rows.len(), examples);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_tasks_then_finalize_list_every_example_exactly_once() {
    let s = Setup::new(100, 0).await;
    ok(&s.plan(4));
    let examples = s.plan_examples();
    assert_eq!(examples, 100);
    for i in 0..4 {
        let out = ok(&s.work(i));
        assert!(out.contains(&format!("teach task {i}: committed attempt")), "{out}");
    }
    assert_eq!(s.completions(), examples as u64, "each example asked once");
    let out = ok(&s.finalize());
    assert!(out.contains("100 rows of 100 examples"), "{out}");
    // Readers use the manifest only: a local root is a shard directory as it is.
    let teach = s.local_root().join("teach");
    assert!(validate_dir(&teach).unwrap().is_empty());
    assert_exactly_once(&read_dir_rows(&teach).unwrap(), examples);
    assert_exactly_once(&s.pulled_rows("pulled"), examples);
    // A task run again after its commit asks nothing and changes nothing.
    let out = ok(&s.work(2));
    assert!(out.contains("already committed"), "{out}");
    assert_eq!(s.completions(), examples as u64);
    // The same plan again is a no-op; another one under the same root is refused.
    assert!(ok(&s.plan(4)).contains("already there, unchanged"));
    assert_eq!(exit_code(&s.plan(3)), Some(78), "{}", text(&s.plan(3)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_errors_exit_78_before_any_request() {
    let s = Setup::new(40, 0).await;
    // No plan yet.
    let o = s.work(0);
    assert_eq!(exit_code(&o), Some(78), "{}", text(&o));
    assert!(text(&o).contains("no plan"), "{}", text(&o));
    ok(&s.plan(2));
    // An index the plan does not have.
    let o = s.work(5);
    assert_eq!(exit_code(&o), Some(78), "{}", text(&o));
    assert!(text(&o).contains("the plan has 2 task(s)"), "{}", text(&o));
    // A config that is not the planned one (another temperature: another identity).
    let other = s.path("other.toml");
    write_config(&other, &s.srv.base_url(), 40, 0.7);
    let o = s
        .cmd(&["teach", other.to_str().unwrap(), "--store", &s.store, "--task", "0"])
        .output()
        .unwrap();
    assert_eq!(exit_code(&o), Some(78), "{}", text(&o));
    assert!(text(&o).contains("planned for teach identity"), "{}", text(&o));
    // No index at all, and no scheduler variable.
    let o = s
        .cmd(&["teach", s.config.to_str().unwrap(), "--store", &s.store])
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .output()
        .unwrap();
    assert_eq!(exit_code(&o), Some(78), "{}", text(&o));
    // The index from a Kubernetes Indexed Job's variable.
    let o = s
        .cmd(&["teach", s.config.to_str().unwrap(), "--store", &s.store])
        .env("JOB_COMPLETION_INDEX", "1")
        .output()
        .unwrap();
    assert!(ok(&o).contains("teach task 1: committed"), "{}", text(&o));
    assert_eq!(s.completions(), s.slice_len(1) as u64, "only task 1 asked anything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_task_and_resubmitted_asks_again_only_what_was_in_flight() {
    let s = Setup::new(80, 40).await;
    ok(&s.plan(2));
    let slice = s.slice_len(1) as u64;
    let mut child: Child = s.worker(1, "scratch").spawn().unwrap();
    let t = Instant::now();
    while s.completions() < slice / 3 {
        assert!(t.elapsed() < Duration::from_secs(60), "no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    let at_kill = s.completions();
    assert!(at_kill < slice, "killed mid-task ({at_kill} of {slice})");
    assert!(!s.local_root().join("teach/_commits/1.json").exists());
    // Resubmitted (same node, same scratch): resumes.
    ok(&s.work(1));
    let asked = s.completions();
    // 4 requests in flight at most (concurrency = 4).
    assert!(
        asked <= slice + 4,
        "{asked} requests for a slice of {slice}: more than the 4 in flight were asked again"
    );
    ok(&s.work(0));
    ok(&s.finalize());
    assert_exactly_once(&s.pulled_rows("pulled"), 80);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_task_twice_at_once_commits_once_and_gc_removes_the_loser() {
    let s = Setup::new(60, 20).await;
    ok(&s.plan(2));
    // Two machines (two scratch folders) running index 0 at once: both do
    // the work, the first commit wins, the other's attempt is unreferenced.
    let a = s.worker(0, "scratch-a").spawn().unwrap();
    let b = s.worker(0, "scratch-b").spawn().unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let (ta, tb) = (ok(&a), ok(&b));
    let won = [&ta, &tb]
        .iter()
        .filter(|t| t.contains("teach task 0: committed attempt"))
        .count();
    let lost = [&ta, &tb].iter().filter(|t| t.contains("committed first")).count();
    assert_eq!((won, lost), (1, 1), "{ta}\n{tb}");
    // The same machine twice at once: the second waits for the first, then
    // finds its commit and asks nothing.
    let before = s.completions();
    let c = s.worker(1, "scratch").spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d = s.worker(1, "scratch").spawn().unwrap();
    let (c, d) = (c.wait_with_output().unwrap(), d.wait_with_output().unwrap());
    let (tc, td) = (ok(&c), ok(&d));
    assert!(tc.contains("committed attempt"), "{tc}");
    assert!(td.contains("waiting") && td.contains("already committed"), "{td}");
    assert_eq!(s.completions() - before, s.slice_len(1) as u64);
    ok(&s.finalize());
    let attempts = |i: u32| {
        std::fs::read_dir(s.local_root().join(format!("teach/tasks/{i}/attempts")))
            .unwrap()
            .count()
    };
    assert_eq!((attempts(0), attempts(1)), (2, 1));
    let gc = ok(&s.cmd(&["shards", "gc", &s.store]).output().unwrap());
    assert!(gc.contains("1 unreferenced attempt(s)"), "{gc}");
    assert_eq!(attempts(0), 1);
    assert!(ok(&s.cmd(&["shards", "gc", &s.store]).output().unwrap()).contains("0 unreferenced"));
    assert_exactly_once(&s.pulled_rows("pulled"), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_dead_between_upload_and_commit_is_redone_without_asking_again() {
    let s = Setup::new(40, 0).await;
    ok(&s.plan(2));
    let o = s
        .worker(0, "scratch")
        .env("STEPWISE_CRASH_AT", "task:uploaded")
        .output()
        .unwrap();
    assert!(!o.status.success(), "the crash point aborts");
    assert!(!s.local_root().join("teach/_commits/0.json").exists());
    let asked = s.completions();
    assert_eq!(asked, s.slice_len(0) as u64);
    // Uncommitted: gc keeps its attempt (one may be uploading).
    assert!(ok(&s.cmd(&["shards", "gc", &s.store]).output().unwrap()).contains("0 unreferenced"));
    ok(&s.work(0));
    assert_eq!(s.completions(), asked, "the resubmitted task asked nothing again");
    ok(&s.work(1));
    ok(&s.finalize());
    assert!(ok(&s.cmd(&["shards", "gc", &s.store]).output().unwrap()).contains("1 unreferenced"));
    assert_exactly_once(&s.pulled_rows("pulled"), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalize_names_a_missing_task_then_runs_once() {
    let s = Setup::new(60, 0).await;
    ok(&s.plan(3));
    ok(&s.work(0));
    ok(&s.work(2));
    let o = s.finalize();
    assert_eq!(exit_code(&o), Some(3), "{}", text(&o));
    assert!(text(&o).contains("--array=1 "), "{}", text(&o));
    assert!(!s.local_root().join("teach/_manifest.json").exists());
    ok(&s.work(1));
    ok(&s.finalize());
    let manifest = std::fs::read(s.local_root().join("teach/_manifest.json")).unwrap();
    assert!(ok(&s.finalize()).contains("already finalized"));
    assert_eq!(
        std::fs::read(s.local_root().join("teach/_manifest.json")).unwrap(),
        manifest
    );
    assert_exactly_once(&s.pulled_rows("pulled"), 60);
}

fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)) {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protocol_holds_on_s3_served_by_moto() {
    let Some(bin) = common::moto_server() else { return };
    let (_moto, endpoint) = common::start_moto(&bin, "stepwise-runs");
    let dir = tempfile::tempdir().unwrap();
    let s = Setup::with_store(
        dir,
        "s3://stepwise-runs/arith/run-1".into(),
        common::s3_env(&endpoint),
        60,
        10,
    )
    .await;
    ok(&s.plan(3));
    // Index 0 twice at once on two machines, the others once.
    let a = s.worker(0, "scratch-a").spawn().unwrap();
    let b = s.worker(0, "scratch-b").spawn().unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let both = format!("{}\n{}", ok(&a), ok(&b));
    assert_eq!(both.matches("teach task 0: committed attempt").count(), 1, "{both}");
    assert_eq!(both.matches("committed first").count(), 1, "{both}");
    let o = s.finalize();
    assert_eq!(exit_code(&o), Some(3), "{}", text(&o));
    ok(&s.work(1));
    ok(&s.work(2));
    assert!(ok(&s.finalize()).contains("60 rows of 60 examples"));
    assert!(ok(&s.finalize()).contains("already finalized"));
    assert!(ok(&s.cmd(&["shards", "gc", &s.store]).output().unwrap()).contains("1 unreferenced"));
    assert_exactly_once(&s.pulled_rows("pulled"), 60);
    // The credentials reached no file: not the scratch, the run, the pulled shards.
    assert_eq!(
        files_containing(s.dir.path(), b"stepwise-secret-never-written"),
        Vec::<PathBuf>::new()
    );
}

/// The Kubernetes recipe's Indexed Job fails an index at once on the exit
/// status of a configuration error, retries the others per index, and runs
/// the worker the tests run. (Parsed with PyYAML; no cluster here.)
#[test]
fn the_kubernetes_recipe_fails_an_index_on_the_configuration_exit_status() {
    let py = common::python();
    if !py.exists() {
        let msg = format!("{} is missing: run scripts/setup-data.sh --full", py.display());
        assert!(!common::in_ci(), "{msg}");
        eprintln!("SKIPPED: {msg}");
        return;
    }
    let job = common::root().join("deploy/k8s/teach-job.yaml");
    let script = r#"
import json, sys, yaml
doc = yaml.safe_load(open(sys.argv[1]).read().replace("__TASKS__", "4").replace("__PARALLEL__", "2"))
spec = doc["spec"]
rule = [r for r in spec["podFailurePolicy"]["rules"] if r["action"] == "FailIndex"][0]
c = spec["template"]["spec"]["containers"][0]
print(json.dumps({"mode": spec["completionMode"], "per_index": spec["backoffLimitPerIndex"],
  "codes": rule["onExitCodes"]["values"], "container": rule["onExitCodes"]["containerName"],
  "name": c["name"], "args": c["args"], "restart": spec["template"]["spec"]["restartPolicy"]}))
"#;
    let o = Command::new(&py).arg("-c").arg(script).arg(&job).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["mode"], "Indexed");
    assert!(v["per_index"].as_u64().unwrap() >= 1);
    assert_eq!(v["codes"], serde_json::json!([stepwise_pipeline::tasks::EXIT_CONFIG]));
    assert_eq!(v["container"], v["name"]);
    assert_eq!(v["restart"], "Never");
    let args: Vec<&str> = v["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(&args[..1], &["teach"]);
    assert!(
        args.contains(&"--store") && !args.contains(&"--task"),
        "the index comes from JOB_COMPLETION_INDEX: {args:?}"
    );
}

/// `stepwise export --out URL`: the same files as a local export, on
/// `file://` and on `moto_server` S3.
#[test]
fn an_export_to_a_url_holds_the_files_of_a_local_export() {
    let Some(bin) = common::moto_server() else { return };
    let (_moto, endpoint) = common::start_moto(&bin, "models");
    let dir = tempfile::tempdir().unwrap();
    let texts = ["add 1 2 is 3", "add 4 5 is 9", "So the answer is 7."];
    let tok = stepwise_student::StudentTokenizer::train_bpe(texts.iter(), 64).unwrap();
    let model = dir.path().join("model");
    stepwise_student::Student::from_scratch(
        stepwise_student::Config::tiny(0, 16, 1, 2, 1),
        tok,
        1,
        &candle_core::Device::Cpu,
    )
    .unwrap()
    .save_dir(&model)
    .unwrap();
    let export = |format: &str, out: &str| {
        let o = Command::new(BIN)
            .args(["export", model.to_str().unwrap(), "--format", format, "--out", out])
            .envs(common::s3_env(&endpoint))
            .output()
            .unwrap();
        ok(&o);
    };
    let local = dir.path().join("local");
    export("hf", local.to_str().unwrap());
    export("hf", &format!("file://{}/remote", dir.path().display()));
    export("hf", "s3://models/students/tiny");
    export("gguf", dir.path().join("tiny.gguf").to_str().unwrap());
    export("gguf", "s3://models/students/tiny.gguf");
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        let want = std::fs::read(local.join(name)).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("remote").join(name)).unwrap(),
            want,
            "{name} on file://"
        );
    }
    // Read the S3 objects back with the official client (boto3, which moto ships with).
    let script = "import boto3, hashlib, sys\n\
s3 = boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id='k', aws_secret_access_key='s', region_name='us-east-1')\n\
for k in sys.argv[2:]:\n    print(k, hashlib.sha256(s3.get_object(Bucket='models', Key=k)['Body'].read()).hexdigest())\n";
    let keys = [
        "students/tiny/config.json",
        "students/tiny/model.safetensors",
        "students/tiny/tokenizer.json",
        "students/tiny.gguf",
    ];
    let o = Command::new(common::python())
        .arg("-c")
        .arg(script)
        .arg(&endpoint)
        .args(keys)
        .output()
        .unwrap();
    let got = ok(&o);
    for (key, file) in keys.iter().zip([
        local.join("config.json"),
        local.join("model.safetensors"),
        local.join("tokenizer.json"),
        dir.path().join("tiny.gguf"),
    ]) {
        use sha2::Digest;
        let want = hex::encode(sha2::Sha256::digest(std::fs::read(&file).unwrap()));
        assert!(got.contains(&format!("{key} {want}")), "{key}: {got}");
    }
}
