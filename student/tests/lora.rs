//! LoRA adapters: every adapter weight's gradient is right and the frozen
//! base gets none; training changes only the adapters and learns; a resumed
//! adapter run is exact; merged weights and reloaded adapter directories give
//! the same logits as base + adapters.

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use stepwise_datasets::LabelKind;
use stepwise_student::data::{StudyExample, Task, prompt};
use stepwise_student::generate::generate;
use stepwise_student::llama::{Config, Llama};
use stepwise_student::lora::{Adapters, LoraConfig, Target};
use stepwise_student::params::ParamStore;
use stepwise_student::t5::{T5, T5Config};
use stepwise_student::train::{TrainConfig, ValExample, checkpoint_dir, read_log, train};
use stepwise_student::{Model, ModelConfig, Student, StudentTokenizer};

mod common;
use common::toy::tokenizer;
use common::{check, rand_tensor, without_gradient};

fn project(y: &Tensor, seed: u64) -> candle_core::Result<Tensor> {
    (y * rand_tensor(y.dims(), seed))?.sum_all()
}

/// f64 adapters with non-zero `B` (PEFT starts it at zero, where `A`'s
/// gradient is zero too and would check nothing).
fn f64_adapters(model: &ModelConfig, lora: &LoraConfig) -> Adapters {
    let a = Adapters::init(model, lora, Path::new("base"), 3, &Device::Cpu).unwrap();
    let params = a.params.cast(DType::F64).unwrap();
    for (name, v) in params.vars() {
        if name.ends_with("lora_B.weight") {
            v.set(&rand_tensor(v.dims(), name.len() as u64).affine(0.5, 0.0).unwrap())
                .unwrap();
        }
    }
    Adapters { params, ..a }
}

fn vars_of(p: &ParamStore) -> Vec<(String, Var)> {
    p.vars().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Every adapter of a whole model gets the gradient finite differences give;
/// no base weight gets one.
fn check_adapters(base: &ParamStore, adapters: &Adapters, f: &dyn Fn() -> candle_core::Result<Tensor>, what: &str) {
    let names = vars_of(&adapters.params);
    let refs: Vec<(&str, &Var)> = names.iter().map(|(k, v)| (k.as_str(), v)).collect();
    assert!(!refs.is_empty());
    let without = without_gradient(&refs, f);
    assert!(without.is_empty(), "{what}: adapters with no gradient: {without:?}");
    let worst = check(&refs, f, 2);
    let grads = f().unwrap().backward().unwrap();
    let base_with_grad: Vec<&String> = base
        .vars()
        .iter()
        .filter(|(_, v)| grads.get(v.as_tensor()).is_some())
        .map(|(k, _)| k)
        .collect();
    assert!(
        base_with_grad.is_empty(),
        "{what}: frozen weights got gradients: {base_with_grad:?}"
    );
    eprintln!(
        "{what}: {} adapter tensors checked, worst relative error {worst:.2e}",
        refs.len()
    );
}

fn decoder_gradients(model_type: &str) {
    let mut cfg = Config::tiny(23, 16, 2, 4, 2);
    cfg.model_type = model_type.into();
    cfg.intermediate_size = 24;
    cfg.tie_word_embeddings = model_type == "llama";
    cfg.max_position_embeddings = 16;
    let base = ParamStore::init(&cfg.parameter_shapes(), 0.3, 1, &Device::Cpu)
        .unwrap()
        .cast(DType::F64)
        .unwrap();
    let lora = LoraConfig {
        rank: 2,
        alpha: 3.0,
        ..LoraConfig::default()
    };
    let adapters = f64_adapters(&ModelConfig::Llama(cfg.clone()), &lora);
    assert_eq!(
        adapters.params.vars().len(),
        2 * 7 * 2,
        "q k v o gate up down on two layers, A and B"
    );
    let model = Llama::with_adapters(&cfg, &base, &adapters).unwrap();
    let ids = Tensor::new(&[[1u32, 5, 7, 2, 9], [3, 4, 0, 0, 0]], &Device::Cpu).unwrap();
    let lengths = [5, 2];
    let f = || {
        let logits = model.forward_train(&ids, &lengths, None, DType::F64)?;
        let keep = Tensor::new(&[[1f64; 5], [1., 1., 0., 0., 0.]], &Device::Cpu)?.unsqueeze(2)?;
        project(&logits.broadcast_mul(&keep)?, 99)
    };
    check_adapters(&base, &adapters, &f, model_type);
}

#[test]
fn every_llama_adapter_gets_the_right_gradient_and_the_base_none() {
    decoder_gradients("llama");
}

#[test]
fn every_qwen2_adapter_gets_the_right_gradient_and_the_base_none() {
    decoder_gradients("qwen2");
}

#[test]
fn every_t5_adapter_gets_the_right_gradient_and_the_base_none() {
    for ff in ["relu", "gated-gelu"] {
        let mut c = T5Config::small(23);
        (c.d_model, c.d_kv, c.d_ff, c.num_layers, c.num_heads) = (16, 4, 24, 2, 2);
        (c.relative_attention_num_buckets, c.relative_attention_max_distance) = (8, 16);
        c.feed_forward_proj = ff.into();
        c.tie_word_embeddings = ff == "relu";
        let base = ParamStore::init(&c.parameter_shapes(), 0.3, 1, &Device::Cpu)
            .unwrap()
            .cast(DType::F64)
            .unwrap();
        let adapters = f64_adapters(&ModelConfig::T5(c.clone()), &LoraConfig::default());
        let model = T5::with_adapters(&c, &base, &adapters).unwrap();
        let enc = Tensor::new(&[[1u32, 5, 7, 2], [3, 4, 0, 0]], &Device::Cpu).unwrap();
        let dec = Tensor::new(&[[0u32, 6, 8], [0, 9, 0]], &Device::Cpu).unwrap();
        let f = || project(&model.forward_train(&enc, &[4, 2], &dec, None, DType::F64)?, 5);
        check_adapters(&base, &adapters, &f, &format!("t5 {ff}"));
    }
}

#[test]
fn a_target_the_model_lacks_is_refused_naming_it() {
    let cfg = ModelConfig::Llama(Config::tiny(23, 16, 2, 4, 2));
    let lora = LoraConfig {
        targets: vec![Target::QProj, Target::Wi],
        ..LoraConfig::default()
    };
    let err = Adapters::init(&cfg, &lora, Path::new("b"), 0, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("\"wi\"") && err.contains("q_proj, k_proj"), "{err}");
    let only_q = LoraConfig {
        targets: vec![Target::QProj],
        ..LoraConfig::default()
    };
    let a = Adapters::init(&cfg, &only_q, Path::new("b"), 0, &Device::Cpu).unwrap();
    assert_eq!(
        a.params.vars().keys().collect::<Vec<_>>(),
        [
            "model.layers.0.self_attn.q_proj.lora_A.weight",
            "model.layers.0.self_attn.q_proj.lora_B.weight",
            "model.layers.1.self_attn.q_proj.lora_A.weight",
            "model.layers.1.self_attn.q_proj.lora_B.weight"
        ]
    );
}

/// "add 3 4" -> "7" with a rationale, as in `training.rs`; with `sub`,
/// "sub 7 4" -> "3" (the task a base is pretrained on before adapters learn `add`).
fn toy_op(n: usize, seed: u64, sub: bool) -> Vec<StudyExample> {
    (0..n)
        .map(|i| {
            let k = (i as u64 * 37 + seed * 11) % 100;
            let (a, b) = (k / 10, k % 10);
            let (name, word, y) = match sub {
                true => ("sub", "minus", a.abs_diff(b)),
                false => ("add", "plus", a + b),
            };
            StudyExample {
                id: format!("toy-{name}-{seed}-{i}"),
                input: format!("{name} {a} {b}"),
                label: y.to_string(),
                rationale: Some(format!("{a} {word} {b} is {y}. So the answer is {y}.")),
            }
        })
        .collect()
}

fn toy(n: usize, seed: u64) -> Vec<StudyExample> {
    toy_op(n, seed, false)
}

fn lora_student(tok: &StudentTokenizer, seed: u64) -> Student {
    let base = Student::from_scratch(Config::tiny(0, 48, 2, 4, 2), tok.clone(), 1, &Device::Cpu).unwrap();
    let lora = LoraConfig {
        rank: 8,
        alpha: 16.0,
        dropout: 0.05,
        targets: Vec::new(),
    };
    base.with_lora(&lora, Path::new("base"), seed).unwrap()
}

fn cfg(steps: u64) -> TrainConfig {
    let mut c = TrainConfig {
        steps,
        batch_size: 8,
        grad_accum: 2,
        warmup_steps: 5,
        eval_every: 1000,
        max_len: 64,
        ..TrainConfig::default()
    };
    c.optimizer.lr = 1e-2;
    c
}

fn values(p: &ParamStore) -> Vec<(String, Vec<f32>)> {
    p.vars()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

fn logits(s: &Student, ids: &Tensor) -> Vec<f32> {
    let out = match &s.model {
        Model::Llama(m) => m.forward_train(ids, &[5, 3], None, DType::F32),
        Model::T5(m) => m.forward_train(ids, &[5, 3], &ids.narrow(1, 0, 3).unwrap(), None, DType::F32),
    };
    out.unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn validation(data: &[StudyExample]) -> Vec<ValExample> {
    data.iter()
        .map(|e| ValExample {
            input: e.input.clone(),
            label: e.label.clone(),
            kind: LabelKind::Number,
            choices: None,
        })
        .collect()
}

/// Greedy answers that match the label.
fn accuracy(s: &Student, val: &[ValExample]) -> f64 {
    let prompts: Vec<String> = val.iter().map(|v| prompt(Task::Label, &v.input)).collect();
    let outs = generate(&s.model, &s.tokenizer, &prompts, 8, 64, DType::F32).unwrap();
    let ok = val.iter().zip(&outs).filter(|(v, o)| o.trim() == v.label).count();
    ok as f64 / val.len() as f64
}

#[test]
fn a_lora_student_learns_the_toy_task_and_its_base_stays_bit_identical() {
    // A pretrained base (a random one's tiny tied head caps every logit
    // near 1, so no adapter could fit it): fully trained on subtraction.
    let add = toy(100, 1);
    let sub = toy_op(100, 1, true);
    let tok = tokenizer(&[add.clone(), sub.clone()].concat());
    let mut base = Student::from_scratch(Config::tiny(0, 48, 2, 4, 2), tok.clone(), 1, &Device::Cpu).unwrap();
    let pre = tempfile::tempdir().unwrap();
    let mut pc = cfg(150);
    pc.optimizer.lr = 3e-3;
    train(pre.path(), &mut base, &pc, &sub, &[], DType::F32, |_| {}).unwrap();
    let lora = LoraConfig {
        rank: 8,
        alpha: 16.0,
        dropout: 0.05,
        targets: Vec::new(),
    };
    let val = validation(&add[..40]);
    let base_acc = accuracy(&base, &val);
    let mut s = base.with_lora(&lora, Path::new("base"), 7).unwrap();
    let base_before = values(&s.params);
    let mut c = cfg(250);
    c.eval_every = 250;
    let dir = tempfile::tempdir().unwrap();
    let summary = train(dir.path(), &mut s, &c, &add, &val, DType::F32, |_| {}).unwrap();
    assert_eq!(values(&s.params), base_before, "a frozen base weight changed");
    let lines: Vec<_> = read_log(&dir.path().join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter(|l| l.kind == "train")
        .collect();
    let first = lines[0].loss;
    let last = lines.iter().rev().take(10).map(|l| l.loss).sum::<f64>() / 10.0;
    let acc = summary.best_accuracy.unwrap();
    eprintln!(
        "lora: loss {first:.3} -> {last:.3}, add accuracy {base_acc:.2} -> {acc:.2}, {} of {} parameters trained",
        summary.trainable_parameters, summary.parameters
    );
    assert!(last < 0.5 * first, "loss {first} -> {last}");
    assert!(acc >= base_acc + 0.05, "add accuracy {base_acc} -> {acc}");
    assert!(summary.trainable_parameters < summary.parameters / 2);
    // Checkpoints and the final directory hold the adapters, not the base.
    let ck = checkpoint_dir(dir.path(), 250);
    assert!(ck.join("adapter_model.safetensors").exists() && !ck.join("model.safetensors").exists());
    let opt = std::fs::metadata(ck.join("optimizer.safetensors")).unwrap().len();
    let adapters = std::fs::metadata(ck.join("adapter_model.safetensors")).unwrap().len();
    assert!(
        opt < 3 * adapters,
        "optimizer state {opt} B for adapters of {adapters} B"
    );
}

#[test]
fn resuming_a_lora_run_gives_identical_adapters() {
    let data = toy(40, 3);
    let tok = tokenizer(&data);
    let c = cfg(16);
    let straight = tempfile::tempdir().unwrap();
    let mut a = lora_student(&tok, 5);
    train(straight.path(), &mut a, &c, &data, &[], DType::F32, |_| {}).unwrap();

    let resumed = tempfile::tempdir().unwrap();
    let mut b = lora_student(&tok, 5);
    train(resumed.path(), &mut b, &c, &data, &[], DType::F32, |_| {}).unwrap();
    std::fs::remove_dir_all(checkpoint_dir(resumed.path(), 16)).unwrap();
    std::fs::remove_dir_all(resumed.path().join("final")).unwrap();
    // Fresh adapters from another seed: only the checkpoint can make them equal.
    let mut b = lora_student(&tok, 99);
    let summary = train(resumed.path(), &mut b, &c, &data, &[], DType::F32, |_| {}).unwrap();
    assert_eq!(summary.resumed_from, Some(8));
    assert_eq!(
        values(&a.adapters.as_ref().unwrap().params),
        values(&b.adapters.as_ref().unwrap().params),
        "resumed adapters differ from the straight run's"
    );
    assert_eq!(
        read_log(&straight.path().join("metrics.jsonl")).unwrap(),
        read_log(&resumed.path().join("metrics.jsonl")).unwrap()
    );
}

/// Adapters with random `B`, so they change the model.
fn randomise_b(s: &Student) {
    for (name, v) in s.adapters.as_ref().unwrap().params.vars() {
        if name.ends_with("lora_B.weight") {
            let t = rand_tensor(v.dims(), name.len() as u64).to_dtype(DType::F32).unwrap();
            v.set(&(t * 0.3).unwrap()).unwrap();
        }
    }
}

#[test]
fn merged_weights_and_a_reloaded_adapter_directory_give_base_plus_adapters_logits() {
    let data = toy(20, 2);
    let tok = tokenizer(&data);
    let dir = tempfile::tempdir().unwrap();
    let base_dir = dir.path().join("base");
    Student::from_scratch(Config::tiny(0, 48, 2, 4, 2), tok.clone(), 1, &Device::Cpu)
        .unwrap()
        .save_dir(&base_dir)
        .unwrap();
    let base = Student::load_dir(&base_dir, &Device::Cpu).unwrap();
    let ids = Tensor::new(&[[3u32, 9, 12, 4, 7], [5, 6, 8, 0, 0]], &Device::Cpu).unwrap();
    let base_logits = logits(&base, &ids);
    let base_config = base.config.clone();
    // The adapter directory names its base relative to itself, as a user
    // moving both together expects.
    let s = base.with_lora(&LoraConfig::default(), Path::new("../base"), 4).unwrap();
    assert_eq!(
        logits(&s, &ids),
        base_logits,
        "B starts at zero: the adapted model is the base"
    );
    randomise_b(&s);
    let adapted = logits(&s, &ids);
    assert!(
        max_abs_diff(&adapted, &base_logits) > 1e-3,
        "the adapters change nothing"
    );

    let merged = s.merged().unwrap();
    assert!(merged.adapters.is_none());
    let d = max_abs_diff(&logits(&merged, &ids), &adapted);
    eprintln!("merged vs base + adapters: max abs diff {d:.2e}");
    assert!(d < 1e-4, "merged logits differ by {d}");

    s.save_dir(&dir.path().join("adapter")).unwrap();
    assert!(dir.path().join("adapter/adapter_config.json").exists());
    assert!(!dir.path().join("adapter/model.safetensors").exists());
    let back = Student::load_dir(&dir.path().join("adapter"), &Device::Cpu).unwrap();
    assert!(back.adapters.is_some());
    assert_eq!(logits(&back, &ids), adapted, "a reloaded adapter directory");
    assert_eq!(
        Student::inspect(&dir.path().join("adapter")).unwrap(),
        base_config,
        "inspect reads the base's config through the adapter directory"
    );
}
