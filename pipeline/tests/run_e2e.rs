//! `stepwise run` end to end at a size that keeps CI fast: the solver teacher
//! gives knowledge transfer (and a run stopped by Ctrl-C while teaching and
//! killed mid-training, then re-run, ends with the same results); the mimic teacher gives style-only imitation.

mod common;
use common::{accuracy, metrics};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SMALL: &str = r#"
[data]
examples = 1500
ood_examples = 100
min_steps = 1
max_steps = 1
max_number = 9
val_fraction = 0.05
test_fraction = 0.2
[student]
hidden_size = 96
layers = 3
heads = 4
kv_heads = 2
vocab_size = 512
[train]
steps = 200
eval_every = 100
[eval]
rationale_tokens = 80
"#;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_stepwise")
}

fn run(cfg: &Path, dir: &Path) {
    let out = Command::new(bin())
        .args(["run", cfg.to_str().unwrap(), "--dir", dir.to_str().unwrap()])
        .env("STEPWISE_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stepwise run failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn solver_teacher_transfers_knowledge_and_an_interrupted_run_resumes_to_the_same_results() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("small.toml");
    std::fs::write(&cfg, SMALL).unwrap();
    let a = tmp.path().join("a");
    run(&cfg, &a);
    let m = metrics(&a);
    let v = &m["verdict"];
    eprintln!("verdict: {}", serde_json::to_string_pretty(v).unwrap());
    assert_eq!(v["kind"], "knowledge_transfer");
    assert_eq!(v["student"], "distill");
    let distill = accuracy(&m, "distill", "test");
    let floor = accuracy(&m, "majority", "test").max(accuracy(&m, "base", "test"));
    assert!(distill > floor + 0.05, "distill {distill} against the floor {floor}");
    assert!(v["gain_over_floor"]["lo"].as_f64().unwrap() > 0.0);
    assert_eq!(accuracy(&m, "teacher", "test"), 1.0);
    assert_eq!(
        accuracy(&m, "base", "test"),
        0.0,
        "an untrained student answers nothing right"
    );
    assert_eq!(m["contamination"]["leaked_ids"], 0);
    assert_eq!(m["contamination"]["exact_duplicates"], 0);
    let style = &m["style"]["distill"];
    assert!(style["format_adherence"].as_f64().unwrap() >= 0.8, "{style}");
    let html = std::fs::read_to_string(a.join("report.html")).unwrap();
    assert!(html.matches("<svg").count() >= 2, "plots inline in the report");
    assert!(a.join("report.md").exists() && a.join("eval/predictions.parquet").exists());

    // The same run stopped by Ctrl-C (SIGINT) once teaching has begun, run
    // again and killed with SIGKILL in the middle of training, then re-run.
    let b = tmp.path().join("b");
    let spawn = || {
        Command::new(bin())
            .args(["run", cfg.to_str().unwrap(), "--dir", b.to_str().unwrap()])
            .env("STEPWISE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut child = spawn();
    let teaching = b.join("shards/_pending.jsonl");
    let t = Instant::now();
    while !teaching.exists() {
        assert!(t.elapsed() < Duration::from_secs(300), "teaching never began");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before Ctrl-C");
        std::thread::sleep(Duration::from_millis(10));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert!(!status.success(), "Ctrl-C stops the run");
    assert!(!b.join("metrics.json").exists());
    let mut child = spawn();
    let mid = b.join("student/distill/checkpoints/step-00000064");
    let t = Instant::now();
    while !mid.exists() {
        assert!(t.elapsed() < Duration::from_secs(600), "training never reached step 64");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!b.join("metrics.json").exists());
    run(&cfg, &b);
    let mb = metrics(&b);
    for key in [
        "verdict",
        "verdict_ood",
        "scores",
        "gains",
        "style",
        "faithfulness",
        "contamination",
    ] {
        assert_eq!(m[key], mb[key], "{key} differs after Ctrl-C, a kill and resume");
    }
    let pa = std::fs::read(a.join("eval/predictions.parquet")).unwrap();
    let pb = std::fs::read(b.join("eval/predictions.parquet")).unwrap();
    assert!(pa == pb, "predictions differ after the kill and resume");
    let wa = std::fs::read(a.join("student/distill/final/model.safetensors")).unwrap();
    let wb = std::fs::read(b.join("student/distill/final/model.safetensors")).unwrap();
    assert!(wa == wb, "the resumed student's weights differ");

    // A second run of the same config skips every stage.
    let t = Instant::now();
    run(&cfg, &b);
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "a finished run should be skipped, took {:?}",
        t.elapsed()
    );
}

#[test]
fn mimic_teacher_gives_style_only_imitation() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("mimic.toml");
    // A user with no gold labels: the teacher's labels and rationales, unfiltered.
    std::fs::write(
        &cfg,
        format!(
            "{SMALL}\n[teacher]\nbackend = \"mimic\"\nrequire_gold = false\n[students]\nvariants = [\"distill\"]\n"
        ),
    )
    .unwrap();
    let dir = tmp.path().join("run");
    run(&cfg, &dir);
    let m = metrics(&dir);
    let v = &m["verdict"];
    eprintln!("verdict: {}", serde_json::to_string_pretty(v).unwrap());
    assert_eq!(v["kind"], "style_only_imitation");
    assert_eq!(accuracy(&m, "teacher", "test"), 0.0, "the mimic is always wrong");
    assert!(v["gain_over_floor"]["lo"].as_f64().unwrap() <= 0.0);
    assert_eq!(v["style_converged"], true);
    let style = &m["style"]["distill"];
    assert!(style["format_adherence"].as_f64().unwrap() >= 0.8, "{style}");
    assert!(style["unigram_overlap"].as_f64().unwrap() >= 0.5, "{style}");
    // The untrained student has none of the teacher's style.
    let base = &m["style"]["base"];
    assert!(base["unigram_overlap"].as_f64().unwrap() < 0.3, "{base}");
}
