//! The mechanics of the real-model presets at CI size, with stand-ins for
//! the real models: a tiny student pretrained by the test (a from-scratch
//! run's final student) takes LoRA adapters, as SmolLM2-135M does in the
//! presets.
//!
//! - `examples/arith-real.toml`: the solver stands in for Qwen2.5-Coder; the
//!   base is distilled on one-step problems (it writes rationales, as an
//!   instruct model does) and its adapters on one- and two-step ones, distilled and label-only at equal data: a gain over the
//!   base beyond its interval, knowledge transfer.
//! - `examples/facts-real.toml`: the gold teacher of made-up facts stands in
//!   for a teacher that knows them; the base is trained label-only on other
//!   countries' facts (the task's form, none of the teacher's style); the test facts share the training questions' form,
//!   not their content: the style converges on the teacher's while the
//!   held-out accuracy stays on the floor, style-only imitation.

mod common;
use common::{accuracy, metrics};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_stepwise")
}

fn run(dir: &Path, name: &str, cfg: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, cfg).unwrap();
    let out_dir = dir.join(name);
    let out = Command::new(bin())
        .args(["run", path.to_str().unwrap(), "--dir", out_dir.to_str().unwrap()])
        .env("STEPWISE_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stepwise run {name} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out_dir
}

fn summary(dir: &Path, student: &str) -> Value {
    let p = dir.join(format!("student/{student}/summary.json"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A from-scratch student's shape, as a pretrained base for adapters (its
/// data and variant come with each test).
const BASE_STUDENT: &str = r#"
[student]
hidden_size = 96
layers = 3
heads = 4
kv_heads = 2
vocab_size = 512
"#;

/// The one student a base run trained.
fn base_variant(base: &Path) -> &'static str {
    ["distill", "label-gold"]
        .into_iter()
        .find(|v| base.join(format!("student/{v}/final")).exists())
        .expect("the base run trained a student")
}

/// The adapters' settings, as the presets have them (rank 8, alpha 16).
fn lora(base: &Path, steps: usize) -> String {
    format!(
        "[student]\ninit = {:?}\n[student.lora]\nrank = 8\nalpha = 16.0\n[students]\nvariants = [\"distill\", \"label-gold\"]\n[train]\nsteps = {steps}\neval_every = {steps}\nbatch_size = 8\n[train.optimizer]\nlr = 1e-2\nweight_decay = 0.0\n",
        base.join(format!("student/{}/final", base_variant(base)))
            .to_str()
            .unwrap()
    )
}

/// The numbers a LoRA run's report must state: trained parameters (a small
/// share of the base's), the teacher's and the base's accuracy, the gap closed.
fn assert_adapter_run_reports(dir: &Path, m: &Value) {
    let s = summary(dir, "distill");
    let (trained, total) = (
        s["trainable_parameters"].as_u64().unwrap(),
        s["parameters"].as_u64().unwrap(),
    );
    assert!(
        trained > 0 && trained * 5 < total,
        "{trained} of {total} parameters trained"
    );
    assert!(dir.join("student/distill/final/adapter_config.json").exists());
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(report.contains("parameters trained / total"), "{report}");
    for model in ["teacher", "base", "distill", "label-gold"] {
        assert!(report.contains(model), "the report names {model}");
    }
    assert!(m["verdict"]["gap_closed"].is_number(), "{}", m["verdict"]);
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.matches("<svg").count() >= 2, "plots inline in the report");
}

const ARITH_BASE: &str = r#"
[data]
examples = 600
ood_examples = 0
min_steps = 1
max_steps = 1
max_number = 9
val_fraction = 0.05
test_fraction = 0.1
[students]
variants = ["distill"]
[train]
steps = 150
eval_every = 150
[eval]
rationale_tokens = 40
"#;

const ARITH: &str = r#"
[data]
examples = 900
ood_examples = 0
min_steps = 1
max_steps = 2
max_number = 9
val_fraction = 0.03
test_fraction = 0.34
[eval]
rationale_tokens = 60
"#;

#[test]
fn arith_real_mechanics_adapters_on_a_pretrained_base_gain_the_solvers_skill() {
    let tmp = tempfile::tempdir().unwrap();
    let base = run(tmp.path(), "base", &format!("{ARITH_BASE}{BASE_STUDENT}"));
    let dir = run(tmp.path(), "lora", &format!("{ARITH}{}", lora(&base, 500)));
    let m = metrics(&dir);
    let v = &m["verdict"];
    eprintln!("verdict: {}", serde_json::to_string_pretty(v).unwrap());
    let tests = m["contamination"]["test_inputs"].as_u64().unwrap();
    assert!(tests >= 300, "{tests} test problems");
    assert_eq!(accuracy(&m, "teacher", "test"), 1.0);
    let (b, d) = (accuracy(&m, "base", "test"), accuracy(&m, "distill", "test"));
    assert!(b > 0.0, "the pretrained base answers some: {b}");
    assert_eq!(v["kind"], "knowledge_transfer");
    assert_eq!(v["student"], "distill");
    let gain = &v["gain_over_base"];
    assert!(gain["lo"].as_f64().unwrap() > 0.0, "distill {d} over base {b}: {gain}");
    let closed = v["gap_closed"].as_f64().unwrap();
    assert!((closed - (d - b) / (1.0 - b)).abs() < 1e-9, "gap closed {closed}");
    let rb = &v["rationale_benefit"];
    let label = accuracy(&m, "label-gold", "test");
    assert!(
        (rb["value"].as_f64().unwrap() - (d - label)).abs() < 1e-9,
        "rationale benefit {rb} is distill {d} minus label-gold {label}"
    );
    assert!(m["faithfulness"]["distill"]["steps_valid"].is_number());
    assert_adapter_run_reports(&dir, &m);
}

/// Made-up facts about `n` made-up countries (capital, currency code,
/// calling code), from `seed`: nothing in one fact gives away another's
/// answer. JSONL with a question, an answer and the teacher's rationale.
fn made_up_facts(path: &Path, n: usize, seed: u64) {
    const SYL: [&str; 24] = [
        "vor", "lun", "qua", "tel", "mar", "osk", "bri", "zen", "kal", "dor", "fen", "gai", "hul", "ix", "jor", "ket",
        "lim", "nov", "pra", "ros", "sul", "tam", "ur", "wen",
    ];
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move |k: usize| {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 33) % k as u64) as usize
    };
    let word = |parts: usize, next: &mut dyn FnMut(usize) -> usize| {
        let w: String = (0..parts).map(|_| SYL[next(SYL.len())]).collect();
        let mut c = w.chars();
        c.next().unwrap().to_uppercase().chain(c).collect::<String>()
    };
    let mut seen = std::collections::HashSet::new();
    let mut lines = Vec::new();
    while seen.len() < n {
        let country = format!("{}{}", word(2, &mut next), ["ia", "land", "stan", "or"][next(4)]);
        if !seen.insert(country.clone()) {
            continue;
        }
        let capital = word(2 + next(2), &mut next);
        let code: String = (0..3).map(|_| (b'A' + next(26) as u8) as char).collect();
        let calling = (20 + next(980)).to_string();
        for (q, a, why) in [
            (
                format!("What is the capital of {country}?"),
                capital.clone(),
                format!("{country} is a country of the old maps. Its capital is {capital}."),
            ),
            (
                format!("What is the ISO 4217 code of the currency of {country}?"),
                code.clone(),
                format!("{country} is a country of the old maps. Its currency code is {code}."),
            ),
            (
                format!("What is the international calling code of {country}?"),
                calling.clone(),
                format!("{country} is a country of the old maps. Its numbers are dialled with +{calling}."),
            ),
        ] {
            lines.push(serde_json::json!({"question": q, "answer": a, "why": why}).to_string());
        }
    }
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// A facts run's data and gold teacher; `why`: the teacher gives the
/// facts' rationales (else only "So the answer is X.").
fn facts(file: &Path, test_fraction: f64, why: bool) -> String {
    let rationale = if why { ",rationale=why" } else { "" };
    format!(
        "[data]\nsource = \"files\"\nfiles = [{:?}]\nmap = \"input=question,label=answer,kind=text{rationale},task=facts\"\nval_fraction = 0.05\ntest_fraction = {test_fraction}\n[teacher]\nbackend = \"gold\"\n[eval]\nrationale_tokens = 96\n",
        file.to_str().unwrap()
    )
}

#[test]
fn facts_real_mechanics_the_style_converges_and_held_out_facts_do_not_move() {
    let tmp = tempfile::tempdir().unwrap();
    let (known, unseen) = (tmp.path().join("known.jsonl"), tmp.path().join("unseen.jsonl"));
    made_up_facts(&known, 200, 1);
    made_up_facts(&unseen, 120, 2);
    let base = run(
        tmp.path(),
        "base",
        &format!(
            "{}{BASE_STUDENT}[train]\nsteps = 150\neval_every = 150\n",
            facts(&known, 0.1, false)
        ),
    );
    let dir = run(
        tmp.path(),
        "lora",
        &format!("{}{}", facts(&unseen, 0.5, true), lora(&base, 300)),
    );
    let m = metrics(&dir);
    let v = &m["verdict"];
    eprintln!("verdict: {}", serde_json::to_string_pretty(v).unwrap());
    assert_eq!(
        accuracy(&m, "teacher", "test"),
        1.0,
        "the gold teacher knows every fact"
    );
    assert_eq!(m["contamination"]["leaked_ids"], 0);
    assert_eq!(m["contamination"]["exact_duplicates"], 0);
    // Held-out knowledge does not move: no gain over the floor beyond the interval.
    let d = accuracy(&m, "distill", "test");
    assert!(v["gain_over_floor"]["lo"].as_f64().unwrap() <= 0.0, "{v}");
    assert!(d < 0.1, "distill answers {d} of made-up held-out facts");
    // The style does: the base has none of the teacher's, the distilled student has it.
    let (base_style, style) = (&m["style"]["base"], &m["style"]["distill"]);
    assert!(
        base_style["format_adherence"].as_f64().unwrap() < 0.8 || base_style["unigram_overlap"].as_f64().unwrap() < 0.5,
        "the label-only base writes no rationales like the teacher's: {base_style}"
    );
    assert_eq!(v["style_converged"], true, "{style}");
    assert_eq!(v["kind"], "style_only_imitation");
    assert_adapter_run_reports(&dir, &m);
}
