//! A pretrained student trained with LoRA adapters through `stepwise run`,
//! then exported: the run's final student is a PEFT adapter directory over
//! its base, a changed adapter config retrains it, and the HF, PEFT and GGUF
//! exports answer as the adapter student does.

use std::path::Path;
use std::process::Command;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_stepwise")
}

fn stepwise(args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(args)
        .env("STEPWISE_LOG", "warn")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "stepwise {args:?} failed:\n{text}");
    text
}

const DATA: &str = r#"
[data]
examples = 400
ood_examples = 0
min_steps = 1
max_steps = 1
max_number = 9
val_fraction = 0.05
test_fraction = 0.1
[students]
variants = ["distill"]
[eval]
rationale_tokens = 40
"#;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

fn answers(model: &Path) -> String {
    stepwise(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--input",
        "Ann has 3 apples. She buys 4 more. How many apples does Ann have now?",
        "--input",
        "Bo has 9 pens. He gives away 2. How many pens does Bo have left?",
    ])
}

#[test]
fn a_lora_run_trains_adapters_on_its_base_and_its_exports_answer_alike() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    // A small pretrained base: a from-scratch run's student.
    let base_cfg = write(
        t,
        "base.toml",
        &format!(
            "{DATA}[student]\nhidden_size = 64\nlayers = 2\nheads = 4\nkv_heads = 2\nvocab_size = 384\n[train]\nsteps = 80\neval_every = 80\n"
        ),
    );
    stepwise(&["run", &base_cfg, "--dir", t.join("base").to_str().unwrap()]);
    let base = t.join("base/student/distill/final");
    assert!(base.join("model.safetensors").exists());

    let lora = |rank: usize| {
        format!(
            "{DATA}[student]\ninit = {:?}\n[student.lora]\nrank = {rank}\nalpha = 16.0\ntargets = [\"q_proj\", \"v_proj\", \"down_proj\"]\n[train]\nsteps = 40\neval_every = 40\n",
            base.to_str().unwrap()
        )
    };
    let run_dir = t.join("lora");
    let cfg = write(t, "lora.toml", &lora(4));
    stepwise(&["run", &cfg, "--dir", run_dir.to_str().unwrap()]);
    let fin = run_dir.join("student/distill/final");
    assert!(
        fin.join("adapter_config.json").exists(),
        "the final student is a PEFT adapter directory"
    );
    assert!(!fin.join("model.safetensors").exists(), "the base is not copied");
    let ac: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fin.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(ac["r"], 4);
    assert_eq!(
        ac["target_modules"],
        serde_json::json!(["down_proj", "q_proj", "v_proj"])
    );
    let metrics = std::fs::read_to_string(run_dir.join("metrics.json")).unwrap();
    assert!(metrics.contains("\"distill\""), "the adapter student was evaluated");

    // The same config again: nothing retrains. Another rank: the student does.
    let again = stepwise(&["run", &cfg, "--dir", run_dir.to_str().unwrap()]);
    let summary = run_dir.join("student/distill/summary.json");
    let before = std::fs::metadata(&summary).unwrap().modified().unwrap();
    assert!(!again.contains("training this student again"), "{again}");
    let cfg8 = write(t, "lora8.toml", &lora(8));
    stepwise(&["run", &cfg8, "--dir", run_dir.to_str().unwrap()]);
    assert!(
        std::fs::metadata(&summary).unwrap().modified().unwrap() > before,
        "a new rank retrains"
    );
    let ac: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fin.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(ac["r"], 8);

    // Exports answer as the adapter student does.
    let want = answers(&fin);
    let hf = t.join("export-hf");
    stepwise(&[
        "export",
        fin.to_str().unwrap(),
        "--format",
        "hf",
        "--out",
        hf.to_str().unwrap(),
    ]);
    assert!(hf.join("model.safetensors").exists() && !hf.join("adapter_config.json").exists());
    assert_eq!(answers(&hf), want, "the merged HF export");
    let peft = t.join("export-peft");
    stepwise(&[
        "export",
        fin.to_str().unwrap(),
        "--format",
        "peft",
        "--out",
        peft.to_str().unwrap(),
    ]);
    assert_eq!(answers(&peft), want, "the PEFT export");
    let gguf = t.join("student.gguf");
    stepwise(&[
        "export",
        fin.to_str().unwrap(),
        "--format",
        "gguf",
        "--out",
        gguf.to_str().unwrap(),
    ]);
    assert_eq!(answers(&gguf), want, "the f16 GGUF export");

    // A full student has no adapters to export as PEFT: a clear error.
    let out = Command::new(bin())
        .args(["export", base.to_str().unwrap(), "--format", "peft", "--out"])
        .arg(t.join("nope"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("has no adapters"), "{err}");
}

#[test]
fn lora_on_a_from_scratch_student_is_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write(tmp.path(), "c.toml", &format!("{DATA}[student.lora]\nrank = 4\n"));
    let out = Command::new(bin())
        .args(["run", &cfg, "--dir"])
        .arg(tmp.path().join("r"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("student.lora") && err.contains("student.init"),
        "{err}"
    );
    assert!(!tmp.path().join("r/examples").exists(), "nothing was written");
}
