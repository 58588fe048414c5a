//! A student saved by stepwise opens in the Python `safetensors` package with
//! Hugging Face's tensor names and the shapes config.json implies.

mod common;
use candle_core::Device;
use std::process::Command;
use stepwise_student::{Config, Student, StudentTokenizer};

#[test]
fn python_safetensors_reads_the_student_names_and_shapes() {
    let py = common::python();
    if !common::require(&format!("{} with safetensors", py.display()), py.exists()) {
        return;
    }
    let texts = ["[label] Ann has 3 apples.\nAnswer: 3", "So the answer is 12."];
    let tok = StudentTokenizer::train_bpe(texts.iter(), 300).unwrap();
    let mut cfg = Config::tiny(0, 32, 2, 4, 2);
    cfg.model_type = "qwen2".into();
    cfg.tie_word_embeddings = false;
    let s = Student::from_scratch(cfg, tok, 0, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    s.save_dir(&dir.path().join("m")).unwrap();
    let script = "import json,sys\nfrom safetensors import safe_open\n\
                  f = safe_open(sys.argv[1], framework='numpy')\n\
                  print(json.dumps({k: list(f.get_slice(k).get_shape()) for k in f.keys()}))";
    let out = Command::new(&py)
        .args(["-c", script, dir.path().join("m/model.safetensors").to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("No module named") && !common::in_ci() {
        eprintln!("SKIPPED: the safetensors package is missing: run scripts/setup-data.sh");
        return;
    }
    assert!(out.status.success(), "{stderr}");
    let got: std::collections::BTreeMap<String, Vec<usize>> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got, s.config.parameter_shapes());
    assert!(got.contains_key("model.layers.1.self_attn.q_proj.bias"));
    assert!(got.contains_key("lm_head.weight"));
}
