//! Students stepwise saves load in `transformers`, and its LoRA adapters in
//! `peft`, with the logits stepwise computes: the judges are
//! `tests/python/hf_logits.py` and `tests/python/peft_logits.py`.
//!
//! Every weight is set to seeded noise first (norm weights around one,
//! biases non-zero, LoRA `B` non-zero), so a weight read under the wrong name,
//! transposed, tied when it should not be, or left at its initial value
//! shows in the logits.

mod common;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use stepwise_student::lora::LoraConfig;
use stepwise_student::params::ParamStore;
use stepwise_student::{Config, Model, Student, StudentTokenizer, T5Config};

/// The venv's Python if it imports `modules`; otherwise `None` after
/// `common::require` (a skip locally, a failure under CI).
fn python_with(modules: &[&str]) -> Option<PathBuf> {
    let py = common::python();
    let what = format!("{} with {}", py.display(), modules.join(", "));
    let ok = py.exists()
        && Command::new(&py)
            .args(["-c", &format!("import {}", modules.join(", "))])
            .output()
            .is_ok_and(|o| o.status.success());
    common::require(&what, ok).then_some(py)
}

/// Runs a judge script; prints its output and fails the test if it fails.
fn judge(py: &Path, script: &str, args: &[&Path]) {
    let out = Command::new(py)
        .arg(common::root().join("tests/python").join(script))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{script}:\n{text}");
    assert!(out.status.success(), "{script} failed:\n{text}");
    assert!(text.contains("max abs diff"), "{text}");
}

/// Seeded values uniform in `[-1, 1)` (SplitMix64): the tests crate has no
/// random number generator of its own.
fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Sets every variable whose name `pick` accepts to noise: vectors (norm
/// weights, biases) to `1 ± 0.2` or `± 0.2`, matrices to `± 1.5/sqrt(in)`.
fn scramble(params: &ParamStore, seed: u64, pick: impl Fn(&str) -> bool) {
    for (i, (name, var)) in params.vars().iter().enumerate() {
        if !pick(name) {
            continue;
        }
        let dims = var.dims().to_vec();
        let n: usize = dims.iter().product();
        let v = noise(n, seed * 1000 + i as u64);
        let v: Vec<f32> = match dims.as_slice() {
            [_] if name.ends_with(".bias") => v.iter().map(|x| 0.2 * x).collect(),
            [_] => v.iter().map(|x| 1.0 + 0.2 * x).collect(),
            [_, inp] => v.iter().map(|x| 1.5 * x / (*inp as f32).sqrt()).collect(),
            _ => v,
        };
        var.set(&Tensor::from_vec(v, dims, &Device::Cpu).unwrap()).unwrap();
    }
}

fn tokenizer() -> StudentTokenizer {
    let texts = [
        "Ann has 3 apples. She buys 4 more. How many apples does Ann have now?",
        "3 + 4 = 7. So the answer is 7.",
        "Is a whale a fish? A whale is a mammal. So the answer is no.",
    ];
    StudentTokenizer::train_bpe(texts.iter().cycle().take(30), 300).unwrap()
}

/// A fixed `(b, t)` batch of ids below `vocab`, as i64.
fn ids(b: usize, t: usize, vocab: usize, mult: usize) -> Tensor {
    let v: Vec<i64> = (0..b * t).map(|i| ((i * mult + 5) % vocab) as i64).collect();
    Tensor::from_vec(v, (b, t), &Device::Cpu).unwrap()
}

/// The second row is right-padded (its last two ids are padding).
const T: usize = 9;
const LENGTHS: [usize; 2] = [T, T - 2];

fn lengths_tensor() -> Tensor {
    Tensor::from_vec(LENGTHS.map(|l| l as i64).to_vec(), 2, &Device::Cpu).unwrap()
}

/// Teacher-forced f32 logits of `student` on the batch in `batch` (the
/// inputs' i64 tensors, as the judges read them).
fn logits(student: &Student, batch: &HashMap<String, Tensor>) -> Tensor {
    let u32_of = |k: &str| batch[k].to_dtype(DType::U32).unwrap();
    match &student.model {
        Model::Llama(m) => m
            .forward_train(&u32_of("input_ids"), &LENGTHS, None, DType::F32)
            .unwrap(),
        Model::T5(m) => m
            .forward_train(
                &u32_of("input_ids"),
                &LENGTHS,
                &u32_of("decoder_input_ids"),
                None,
                DType::F32,
            )
            .unwrap(),
    }
}

/// The input batch for a model of `vocab` (with decoder ids for a T5).
fn batch(vocab: usize, seq2seq: bool) -> HashMap<String, Tensor> {
    let mut b = HashMap::from([
        ("input_ids".to_string(), ids(2, T, vocab, 7919)),
        ("lengths".to_string(), lengths_tensor()),
    ]);
    if seq2seq {
        b.insert("decoder_input_ids".into(), ids(2, 6, vocab, 104_729));
    }
    b
}

fn vocab(student: &Student) -> usize {
    student.tokenizer.vocab_size()
}

fn decoder(model_type: &str, tied: bool) -> Config {
    let mut c = Config::tiny(0, 64, 2, 4, 2);
    c.model_type = model_type.into();
    c.tie_word_embeddings = tied;
    if model_type == "qwen2" {
        c.architectures = vec!["Qwen2ForCausalLM".into()];
        c.rms_norm_eps = 1e-6;
        c.rope_theta = 1_000_000.0;
    } else {
        c.rope_theta = 100_000.0;
    }
    c
}

fn t5(ff: &str) -> T5Config {
    let mut c = T5Config::small(0);
    (c.d_model, c.d_kv, c.num_heads, c.num_layers, c.d_ff) = (64, 16, 4, 2, 128);
    c.relative_attention_num_buckets = 8;
    c.relative_attention_max_distance = 16;
    c.feed_forward_proj = ff.into();
    // flan-t5's layout: gated-gelu with an untied head.
    c.tie_word_embeddings = ff == "relu";
    c
}

/// A fresh student with noise weights, saved to `dir`, and its logits there.
fn saved_student(config: impl Into<stepwise_student::ModelConfig>, dir: &Path, seed: u64) -> Student {
    let s = Student::from_scratch(config, tokenizer(), seed, &Device::Cpu).unwrap();
    scramble(&s.params, seed, |_| true);
    s.save_dir(dir).unwrap();
    s
}

fn transformers_matches(config: impl Into<stepwise_student::ModelConfig>, seed: u64) {
    let Some(py) = python_with(&["torch", "transformers", "safetensors"]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("student");
    let s = saved_student(config, &dir, seed);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    eprintln!("config.json: {cfg}");
    let mut b = batch(vocab(&s), matches!(s.model, Model::T5(_)));
    b.insert("logits".into(), logits(&s, &b));
    let file = tmp.path().join("logits.safetensors");
    candle_core::safetensors::save(&b, &file).unwrap();
    judge(&py, "hf_logits.py", &[&dir, &file]);
}

#[test]
fn transformers_loads_a_saved_decoder_student_with_the_same_logits() {
    // Llama with tied embeddings (SmolLM2), Qwen2 (q/k/v biases) with an untied head.
    transformers_matches(decoder("llama", true), 11);
    transformers_matches(decoder("qwen2", false), 12);
}

#[test]
fn transformers_loads_a_saved_t5_student_with_the_same_logits() {
    // T5 v1.0 (relu, tied head scaled by d_model^-0.5) and flan-t5's shape
    // (gated-gelu, untied head).
    transformers_matches(t5("relu"), 21);
    transformers_matches(t5("gated-gelu"), 22);
}

fn peft_matches(config: impl Into<stepwise_student::ModelConfig>, seed: u64) {
    let Some(py) = python_with(&["torch", "transformers", "peft", "safetensors"]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (base_dir, adapter_dir) = (tmp.path().join("base"), tmp.path().join("adapter"));
    let base = saved_student(config, &base_dir, seed);
    let mut b = batch(vocab(&base), matches!(base.model, Model::T5(_)));
    let base_logits = logits(&base, &b);

    let lora = LoraConfig {
        rank: 4,
        alpha: 8.0,
        ..Default::default()
    };
    let s = Student::load_dir(&base_dir, &Device::Cpu)
        .unwrap()
        .with_lora(&lora, &base_dir, 1)
        .unwrap();
    // PEFT starts B at zero, which would hide a B loaded under the wrong
    // name; the model shares storage with these variables.
    let adapters = s.adapters.as_ref().unwrap();
    scramble(&adapters.params, seed + 100, |n| n.ends_with("lora_B.weight"));
    s.save_dir(&adapter_dir).unwrap();
    let adapted = logits(&s, &b);
    let moved = (&adapted - &base_logits)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(moved > 1e-2, "the adapters move the logits by only {moved}");
    let cfg = std::fs::read_to_string(adapter_dir.join("adapter_config.json")).unwrap();
    eprintln!("adapter_config.json: {cfg}");

    b.insert("base_logits".into(), base_logits);
    b.insert("logits".into(), adapted);
    let file = tmp.path().join("logits.safetensors");
    candle_core::safetensors::save(&b, &file).unwrap();
    judge(&py, "peft_logits.py", &[&base_dir, &adapter_dir, &file]);
}

#[test]
fn peft_loads_an_adapter_directory_on_its_base_with_the_same_logits() {
    peft_matches(decoder("llama", true), 31);
    peft_matches(decoder("qwen2", false), 32);
}

#[test]
fn peft_loads_a_t5_adapter_directory_on_its_base_with_the_same_logits() {
    peft_matches(t5("relu"), 41);
    peft_matches(t5("gated-gelu"), 42);
}
