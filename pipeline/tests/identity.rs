//! Stage identity as a user meets it: tuning an operational knob after a
//! finished run redoes nothing; an edited prompt re-asks only what changed
//! (the cache answers the rest); a changed curation retrains without a
//! request; a replaced data file redoes everything after it; `stepwise
//! teach` and `stepwise run` share shards. And what can be checked first
//! fails within seconds, before any stage runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};
use stepwise_datasets::arith::{ArithSpec, generate};
use stepwise_teacher::server::{self, LocalServer, ServerConfig};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_stepwise")
}

/// A run small enough to repeat many times: two students of a few steps.
fn config(base_url: &str, extra: &str) -> String {
    format!(
        r#"
[data]
examples = 120
ood_examples = 20
max_number = 9
[teacher]
kind = "http"
base_url = "{base_url}"
model = "solver"
{extra}
[student]
hidden_size = 32
layers = 1
heads = 2
kv_heads = 1
vocab_size = 400
[train]
steps = 4
eval_every = 4
batch_size = 4
[eval]
max_examples = 10
rationale_tokens = 16
bootstrap = 50
"#
    )
}

/// Inserts `line` at the top of `[section]` of a config text.
fn with(cfg: &str, section: &str, line: &str) -> String {
    cfg.replacen(&format!("[{section}]\n"), &format!("[{section}]\n{line}\n"), 1)
}

fn stepwise(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("STEPWISE_LOG", "info")
        .output()
        .unwrap()
}

fn run(cfg_text: &str, tmp: &Path, dir: &Path) -> String {
    let cfg = tmp.join("stepwise.toml");
    std::fs::write(&cfg, cfg_text).unwrap();
    let out = stepwise(&["run", cfg.to_str().unwrap(), "--dir", dir.to_str().unwrap()]);
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "stepwise run failed:\n{log}");
    log
}

async fn solver() -> LocalServer {
    server::start("127.0.0.1:0", ServerConfig::default()).await.unwrap()
}

fn answered(srv: &LocalServer) -> u64 {
    srv.stats.completions.load(Ordering::SeqCst)
}

fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

fn finals(dir: &Path) -> Vec<SystemTime> {
    ["distill", "label-gold"]
        .iter()
        .map(|s| mtime(&dir.join("student").join(s).join("final/model.safetensors")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_an_operational_knob_after_a_finished_run_redoes_nothing() {
    let srv = solver().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let cfg = config(&srv.base_url(), "");
    run(&cfg, tmp.path(), &dir);
    let asked = answered(&srv);
    let trained = finals(&dir);
    let predicted = mtime(&dir.join("eval/predictions.parquet"));
    let knobs = [
        ("teacher", "concurrency = 3"),
        ("teacher", "timeout_s = 7.5"),
        ("teacher", "idle_timeout_s = 9.5"),
        ("teacher", "total_timeout_s = 60.0"),
        ("teacher", "stream = false"),
        ("teacher", "requests_per_minute = 100000"),
        ("teacher", "tokens_per_minute = 10000000"),
        ("teacher", "max_retries = 2"),
        ("teacher", "max_batch = 3"),
        ("teacher", "device = \"auto\""),
        ("teacher", "price_prompt = 2.5"),
        ("teacher", "price_completion = 10.0"),
        ("teacher", "budget_usd = 100.0"),
        ("teacher", "rows_per_shard = 7"),
        ("teacher", "api_key_env = \"PATH\""),
        ("student", "device = \"auto\""),
        ("train", "keep_checkpoints = 2"),
        ("eval", "batch_size = 3"),
    ];
    for (section, knob) in knobs {
        let log = run(&with(&cfg, section, knob), tmp.path(), &dir);
        assert_eq!(answered(&srv), asked, "{knob}: the teacher was asked again");
        assert!(
            log.contains("teach: up to date, skipped"),
            "{knob}: teach ran again:\n{log}"
        );
        assert_eq!(
            log.matches("train: up to date, skipped").count(),
            2,
            "{knob}: a student was trained again:\n{log}"
        );
        assert!(
            log.contains("eval: up to date, skipped"),
            "{knob}: eval ran again:\n{log}"
        );
        assert_eq!(finals(&dir), trained, "{knob}: a final model was rewritten");
        assert_eq!(mtime(&dir.join("eval/predictions.parquet")), predicted, "{knob}");
    }
    srv.shutdown().await;
}

/// Ten MMLU-style questions: held-out probes asked with the multiple-choice template.
fn probe_file(path: &Path) {
    let lines: Vec<String> = (0..10)
        .map(|i: usize| {
            let key = ["A", "B", "C", "D"][i % 4];
            serde_json::json!({
                "question": format!("Which letter is number {i}?"),
                "answer_a": "a", "answer_b": "b", "answer_c": "c", "answer_d": "d",
                "correct_answer": key, "topic": "letters"
            })
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_prompt_re_asks_only_its_examples_and_a_changed_curation_retrains_without_asking() {
    let srv = solver().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let prompts = tmp.path().join("prompts");
    std::fs::create_dir_all(&prompts).unwrap();
    let probes = tmp.path().join("mmlu.jsonl");
    probe_file(&probes);
    let extra = format!("prompt_dir = {:?}", prompts.to_str().unwrap());
    let cfg = with(
        &config(&srv.base_url(), &extra),
        "data",
        &format!(
            "probe_files = [{:?}]\nprobe_format = \"mmlu\"",
            probes.to_str().unwrap()
        ),
    );
    run(&cfg, tmp.path(), &dir);
    let asked = answered(&srv);
    assert_eq!(asked, 140 + 10, "every example and probe asked once");
    let trained = finals(&dir);

    // The multiple-choice template: only the ten probes are asked with it.
    std::fs::write(
        prompts.join("multiple_choice.txt"),
        "Answer with the letter, reasoning step by step.\nQ: {input}\nOptions: {choices}\nA:",
    )
    .unwrap();
    let log = run(&cfg, tmp.path(), &dir);
    assert_eq!(answered(&srv) - asked, 10, "only the probes are asked again:\n{log}");
    assert!(
        log.contains("cache_hits: 140"),
        "the cache answers every unchanged request:\n{log}"
    );
    assert_eq!(
        log.matches("train: up to date, skipped").count(),
        2,
        "no training row changed, so no student is retrained:\n{log}"
    );
    assert_eq!(finals(&dir), trained);
    assert!(
        !log.contains("eval: up to date"),
        "the teacher's answers changed: eval runs"
    );
    let retired: Vec<_> = std::fs::read_dir(dir.join("retired")).unwrap().flatten().collect();
    assert_eq!(retired.len(), 1, "the earlier shards are kept aside");

    // Curation chooses training rows: the distilled student is retrained,
    // the label-only one on gold labels is not, and nothing is asked.
    let asked = answered(&srv);
    let log = run(&with(&cfg, "teacher", "require_gold = false"), tmp.path(), &dir);
    assert_eq!(answered(&srv), asked, "a curation change asks nothing");
    assert!(log.contains("teach: up to date, skipped"));
    assert!(log.contains("training this student again"), "{log}");
    let now = finals(&dir);
    assert_ne!(now[0], trained[0], "distill retrained");
    assert_eq!(now[1], trained[1], "label-gold kept");
    srv.shutdown().await;
}

fn arith_jsonl(path: &Path, seed: u64) {
    let ex = generate(&ArithSpec {
        seed,
        in_distribution: 80,
        out_of_distribution: 0,
        max_number: 9,
        ..Default::default()
    });
    let lines: Vec<String> = ex
        .iter()
        .map(|e| serde_json::json!({"question": e.input, "answer": e.label}).to_string())
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_file_replaced_at_the_same_path_redoes_data_and_everything_after_it() {
    let srv = solver().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let data = tmp.path().join("problems.jsonl");
    arith_jsonl(&data, 1);
    let cfg = with(
        &config(&srv.base_url(), ""),
        "data",
        &format!(
            "source = \"files\"\nfiles = [{:?}]\nmap = \"input=question,label=answer,kind=number\"",
            data.to_str().unwrap()
        ),
    );
    run(&cfg, tmp.path(), &dir);
    let asked = answered(&srv);
    assert_eq!(asked, 80);
    let trained = finals(&dir);
    let log = run(&cfg, tmp.path(), &dir);
    assert!(log.contains("data: up to date, skipped") && log.contains("teach: up to date, skipped"));
    arith_jsonl(&data, 2);
    let log = run(&cfg, tmp.path(), &dir);
    assert!(log.contains("data: examples written"), "{log}");
    assert!(answered(&srv) > asked, "the new problems are asked");
    let now = finals(&dir);
    assert!(now[0] != trained[0] && now[1] != trained[1], "both students retrained");
    assert!(!log.contains("eval: up to date"));
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stepwise_teach_then_stepwise_run_share_the_shards() {
    let srv = solver().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, config(&srv.base_url(), "")).unwrap();
    let out = stepwise(&["teach", cfg.to_str().unwrap(), "--dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(answered(&srv), 140);
    // Again through the run directory's own config: nothing to do.
    let out = stepwise(&["teach", "--run", dir.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("teach: up to date, skipped"));
    let log = run(&std::fs::read_to_string(&cfg).unwrap(), tmp.path(), &dir);
    assert!(log.contains("teach: up to date, skipped"), "{log}");
    assert_eq!(answered(&srv), 140, "run asked nothing again");
    srv.shutdown().await;
}

/// Runs `stepwise run` on `cfg` and returns its error output and how long it took.
fn failing_run(cfg_text: &str, tmp: &Path) -> (String, Duration, PathBuf) {
    let cfg = tmp.join("bad.toml");
    let dir = tmp.join("bad-run");
    std::fs::write(&cfg, cfg_text).unwrap();
    let t = Instant::now();
    let out = stepwise(&["run", cfg.to_str().unwrap(), "--dir", dir.to_str().unwrap()]);
    let took = t.elapsed();
    assert!(!out.status.success());
    (String::from_utf8_lossy(&out.stderr).to_string(), took, dir)
}

#[test]
fn what_can_be_checked_first_fails_within_seconds_naming_the_key_file_or_url() {
    let tmp = tempfile::tempdir().unwrap();
    let garbage = tmp.path().join("garbage.gguf");
    std::fs::write(&garbage, vec![7u8; 4096]).unwrap();
    // A local solver teacher, so only the student is wrong.
    let local = "[student]\ninit = \"GARBAGE\"\n".replace("GARBAGE", garbage.to_str().unwrap());
    let (err, took, dir) = failing_run(&local, tmp.path());
    assert!(err.contains("student.init") && err.contains("garbage.gguf"), "{err}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(!dir.join("examples").exists(), "no stage ran");

    let missing = tmp.path().join("nowhere/problems.jsonl");
    let files = format!(
        "[data]\nsource = \"files\"\nfiles = [{:?}]\nformat = \"gsm8k\"\n",
        missing.to_str().unwrap()
    );
    let (err, took, dir) = failing_run(&files, tmp.path());
    assert!(
        err.contains("data.files") && err.contains("nowhere/problems.jsonl"),
        "{err}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(!dir.join("examples").exists(), "no stage ran");

    // Port 9 (discard) on loopback: nothing listens, the connection is refused.
    let url = "http://127.0.0.1:9/v1";
    let http = format!("[teacher]\nkind = \"http\"\nbase_url = \"{url}\"\nmodel = \"m\"\n");
    let (err, took, dir) = failing_run(&http, tmp.path());
    assert!(err.contains("teacher.base_url") && err.contains(url), "{err}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(!dir.join("examples").exists(), "no stage ran");

    let kind = "[teacher]\nkind = \"carrier-pigeon\"\n";
    let (err, _, _) = failing_run(kind, tmp.path());
    assert!(
        err.contains("carrier-pigeon") && err.contains("`local`") && err.contains("`http`"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_while_writing_predictions_a_checkpoint_or_final_leaves_the_previous_version() {
    use stepwise_datasets::atomic::CRASH_AT_ENV;
    let srv = solver().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let cfg = config(&srv.base_url(), "");
    run(&cfg, tmp.path(), &dir);
    let cfg_path = tmp.path().join("stepwise.toml");
    let crashed = |cfg_text: &str, at: &str| {
        std::fs::write(&cfg_path, cfg_text).unwrap();
        let out = Command::new(bin())
            .args(["run", cfg_path.to_str().unwrap(), "--dir", dir.to_str().unwrap()])
            .env(CRASH_AT_ENV, at)
            .env("STEPWISE_LOG", "warn")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{at}: the run was not stopped there");
    };
    let preds = dir.join("eval/predictions.parquet");
    let before = std::fs::read(&preds).unwrap();
    // Other decoding lengths: eval runs again and rewrites the predictions.
    let longer = with(&cfg, "eval", "answer_tokens = 6");
    crashed(&longer, "file:synced@predictions.parquet");
    assert_eq!(
        std::fs::read(&preds).unwrap(),
        before,
        "killed before the rename: the old file, whole"
    );
    crashed(&longer, "file:renamed@predictions.parquet");
    let after = std::fs::read(&preds).unwrap();
    assert_ne!(after, before, "killed after the rename: the new file");
    let out = stepwise(&["shards", "validate", dir.join("shards").to_str().unwrap()]);
    assert!(out.status.success());

    // Another learning rate: both students train again; kill the distilled
    // one while it swaps in a checkpoint, then while it swaps in final/.
    let student = dir.join("student/distill");
    let device = candle_core::Device::Cpu;
    let final_before = std::fs::read(student.join("final/model.safetensors")).unwrap();
    let more = format!("{cfg}\n[train.optimizer]\nlr = 0.002\n");
    crashed(&more, "dir:filled@step-00000004");
    let ckpts: Vec<String> = std::fs::read_dir(student.join("checkpoints"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    assert!(!ckpts.contains(&"step-00000004".to_string()), "{ckpts:?}");
    stepwise_student::Student::load_dir(&student.join("checkpoints/step-00000002"), &device)
        .expect("the previous checkpoint is complete");
    crashed(&more, "dir:filled@final");
    stepwise_student::Student::load_dir(&student.join("final"), &device).expect("final/ is complete");
    assert_eq!(
        std::fs::read(student.join("final/model.safetensors")).unwrap(),
        final_before,
        "killed before the swap: the previous final/"
    );
    crashed(&more, "dir:exchanged@final");
    stepwise_student::Student::load_dir(&student.join("final"), &device).expect("final/ is complete");
    assert_ne!(
        std::fs::read(student.join("final/model.safetensors")).unwrap(),
        final_before,
        "killed after the swap: the new final/"
    );
    // Nothing was lost: the run finishes from where it was stopped.
    run(&more, tmp.path(), &dir);
    srv.shutdown().await;
}
