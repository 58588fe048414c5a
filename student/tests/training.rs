//! The trainer end to end on toy data: it learns, resumes exactly, saves a
//! directory that reloads to the same logits, and decodes batches as singles.

mod common;

use common::toy::{tokenizer, toy, weights};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use stepwise_datasets::LabelKind;
use stepwise_student::data::{StudyExample, Task, prompt};
use stepwise_student::generate::{Decode, decode_batch, decode_batch_with, generate};
use stepwise_student::params::ParamStore;
use stepwise_student::train::{LogLine, TrainConfig, ValExample, checkpoint_dir, read_log, train};
use stepwise_student::{Config, Model, ModelConfig, Student, StudentTokenizer, T5Config};

fn student(tok: &StudentTokenizer) -> Student {
    Student::from_scratch(Config::tiny(0, 32, 2, 4, 2), tok.clone(), 1, &Device::Cpu).unwrap()
}

fn cfg(steps: u64) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: 8,
        grad_accum: 2,
        warmup_steps: 5,
        eval_every: 1000,
        max_len: 64,
        dropout: 0.1,
        dropout_from_step: 3,
        ..TrainConfig::default()
    }
}

/// Validation examples from toy examples (inputs the students trained on).
fn validation(data: &[StudyExample]) -> Vec<ValExample> {
    data.iter()
        .cloned()
        .map(|e| ValExample {
            input: e.input,
            label: e.label,
            kind: LabelKind::Number,
            choices: None,
        })
        .collect()
}

fn train_log(dir: &Path) -> Vec<LogLine> {
    let log = read_log(&dir.join("metrics.jsonl")).unwrap();
    log.into_iter().filter(|l| l.kind == "train").collect()
}

/// The first step's loss and the mean of the last ten.
fn first_and_last_loss(lines: &[LogLine]) -> (f64, f64) {
    let last = lines.iter().rev().take(10).map(|l| l.loss).sum::<f64>() / 10.0;
    (lines[0].loss, last)
}

#[test]
fn a_tiny_student_learns_the_toy_task_and_its_rationale() {
    let data = toy(100, 1);
    let tok = tokenizer(&data);
    let mut s = student(&tok);
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(300);
    c.dropout = 0.0;
    c.optimizer.lr = 1e-2;
    // Inputs it trained on: the point is that it learns, not that 30k
    // parameters generalise addition.
    let val = validation(&data[..16]);
    let summary = train(dir.path(), &mut s, &c, &data, &val, DType::F32, |_| {}).unwrap();
    let train_lines = train_log(dir.path());
    let (first, last) = first_and_last_loss(&train_lines);
    eprintln!(
        "loss {first:.3} -> {last:.3}; val accuracy {:?}; {summary:?}",
        summary.best_accuracy
    );
    assert!(last < first * 0.25, "loss fell only from {first} to {last}");
    assert!(
        train_lines.iter().all(|l| l.rationale_loss.is_some()),
        "both tasks in every step"
    );
    assert!(
        summary.best_accuracy.unwrap() > 0.5,
        "accuracy on trained inputs: {:?}",
        summary.best_accuracy
    );
    // Log-spaced checkpoints, and the best model in final/.
    for step in [1, 2, 4, 8, 16, 32, 64, 128, 256, 300] {
        assert!(
            checkpoint_dir(dir.path(), step).join("trainer_state.json").exists(),
            "checkpoint {step}"
        );
    }
    assert!(!checkpoint_dir(dir.path(), 3).exists());
    Student::load_dir(&dir.path().join("final"), &Device::Cpu).unwrap();
}

#[test]
fn resuming_from_a_checkpoint_gives_identical_weights() {
    let data = toy(40, 3);
    let tok = tokenizer(&data);
    let c = cfg(16);
    let straight = tempfile::tempdir().unwrap();
    let mut a = student(&tok);
    train(straight.path(), &mut a, &c, &data, &[], DType::F32, |_| {}).unwrap();

    // Same run, then everything after step 8 removed: as if killed after the
    // checkpoint at step 8. Resume with a fresh student (fresh weights).
    let resumed = tempfile::tempdir().unwrap();
    let mut b = student(&tok);
    train(resumed.path(), &mut b, &c, &data, &[], DType::F32, |_| {}).unwrap();
    std::fs::remove_dir_all(checkpoint_dir(resumed.path(), 16)).unwrap();
    std::fs::remove_dir_all(resumed.path().join("final")).unwrap();
    let mut b = Student::from_scratch(Config::tiny(0, 32, 2, 4, 2), tok.clone(), 99, &Device::Cpu).unwrap();
    let summary = train(resumed.path(), &mut b, &c, &data, &[], DType::F32, |_| {}).unwrap();
    assert_eq!(summary.resumed_from, Some(8));
    assert_eq!(
        weights(&a),
        weights(&b),
        "resumed weights differ from the straight run's"
    );
    let la = read_log(&straight.path().join("metrics.jsonl")).unwrap();
    let lb = read_log(&resumed.path().join("metrics.jsonl")).unwrap();
    assert_eq!(la, lb, "the resumed run's log differs");

    // A different training config refuses to resume into the same directory.
    let mut other = c.clone();
    other.alpha = 0.7;
    let err = train(resumed.path(), &mut b, &other, &data, &[], DType::F32, |_| {})
        .err()
        .unwrap();
    assert!(err.to_string().contains("different training config"), "{err}");
}

fn logits(s: &Student, ids: &Tensor) -> Vec<f32> {
    let out = match &s.model {
        Model::Llama(m) => m.forward_train(ids, &[5, 3], None, DType::F32),
        Model::T5(m) => m.forward_train(ids, &[5, 3], &ids.narrow(1, 0, 3).unwrap(), None, DType::F32),
    };
    out.unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn a_saved_student_reloads_with_identical_logits() {
    let data = toy(16, 4);
    let tok = tokenizer(&data);
    let s = student(&tok);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model");
    s.save_dir(&out).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(out.join(f).exists(), "{f}");
    }
    let back = Student::load_dir(&out, &Device::Cpu).unwrap();
    let ids = Tensor::new(&[[1u32, 2, 3, 4, 5], [6, 7, 8, 0, 0]], &Device::Cpu).unwrap();
    assert_eq!(logits(&s, &ids), logits(&back, &ids));
    assert_eq!(back.config, s.config);

    // A file whose tensors do not match config.json is refused by name.
    let ModelConfig::Llama(mut cfg) = s.config.clone() else {
        panic!("a llama student")
    };
    cfg.hidden_size = 48;
    std::fs::write(out.join("config.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
    let err = Student::load_dir(&out, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("model.safetensors") && err.contains("shape"), "{err}");
}

/// The student the decoding tests generate with: 40 steps on the toy task, no dropout.
fn decoding_student() -> Student {
    let data = toy(48, 5);
    let tok = tokenizer(&data);
    let mut s = student(&tok);
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(40);
    c.dropout = 0.0;
    c.optimizer.lr = 3e-3;
    train(dir.path(), &mut s, &c, &data, &[], DType::F32, |_| {}).unwrap();
    s
}

#[test]
fn a_prompt_decodes_the_same_alone_and_in_a_padded_batch() {
    let s = decoding_student();
    let tok = &s.tokenizer;
    let prompts: Vec<String> = ["add 1 2", "add 9 0 4 7 7 1 2", "add 5"]
        .iter()
        .map(|p| prompt(Task::Label, p))
        .collect();
    let batched = generate(&s.model, &s.tokenizer, &prompts, 8, 8, DType::F32).unwrap();
    for (p, b) in prompts.iter().zip(&batched) {
        let alone = generate(&s.model, &s.tokenizer, std::slice::from_ref(p), 8, 1, DType::F32).unwrap();
        assert_eq!(&alone[0], b, "prompt {p:?}");
    }
    // The cache path agrees with a full forward pass at every generated
    // token: each greedy token is the full pass's most likely next token,
    // with the same log-probability (this student repeats one token, so
    // only the log-probabilities tell the positions apart).
    let m = s.model.llama().unwrap();
    let prompt_ids: Vec<u32> = tok.encode(&prompts[1]).unwrap();
    let greedy = Decode {
        top_logprobs: Some(0),
        ..Decode::greedy(8)
    };
    let out = decode_batch(m, tok, &[prompt_ids.as_slice()], &[greedy], DType::F32).unwrap();
    assert!(!out[0].ids.is_empty(), "the student generated nothing");
    let ids: Vec<u32> = prompt_ids.iter().chain(&out[0].ids).copied().collect();
    let (n, p) = (ids.len(), prompt_ids.len());
    let full = candle_nn::ops::log_softmax(
        &m.forward_train(
            &Tensor::from_vec(ids.clone(), (1, n), &Device::Cpu).unwrap(),
            &[n],
            None,
            DType::F32,
        )
        .unwrap()
        .squeeze(0)
        .unwrap(),
        1,
    )
    .unwrap();
    let argmax = full.argmax(1).unwrap().to_vec1::<u32>().unwrap();
    assert_eq!(
        &argmax[p - 1..n - 1],
        &ids[p..],
        "greedy tokens against the full pass's argmax"
    );
    let full = full.to_vec2::<f32>().unwrap();
    for (j, lp) in out[0].logprobs.iter().enumerate() {
        let want = full[p - 1 + j][lp.id as usize];
        assert!(
            (lp.logprob - want).abs() < 1e-4,
            "token {j}: cached {} against full {want}",
            lp.logprob
        );
    }
    assert_eq!(out[0].logprobs.len(), out[0].ids.len());
}

/// A few-shot prompt's shared instructions are prefilled once for the whole
/// batch, with each row's padding between them and its own question: the
/// answers are those of each prompt decoded alone.
#[test]
fn prompts_sharing_a_long_prefix_decode_as_they_do_alone() {
    let s = decoding_student();
    let tok = &s.tokenizer;
    let shots = "add 3 1 4 1 5 9 2 6 5 3 5 8 9 7 9 3 2 3 8 4 6 2 6 4 3 3 8 3 2 7 9 5 0 2 8 8 4 1";
    assert!(
        tok.encode(shots).unwrap().len() >= 40,
        "the prefix is long enough to be shared"
    );
    let prompts: Vec<String> = ["1 2", "9 0 4 7 7 1 2", "5", "5 5"]
        .iter()
        .map(|q| prompt(Task::Label, &format!("{shots} {q}")))
        .collect();
    let batched = generate(&s.model, &s.tokenizer, &prompts, 8, 8, DType::F32).unwrap();
    for (p, b) in prompts.iter().zip(&batched) {
        let alone = generate(&s.model, &s.tokenizer, std::slice::from_ref(p), 8, 1, DType::F32).unwrap();
        assert_eq!(&alone[0], b, "prompt {p:?}");
    }
    // A prompt that is all of the others' shared prefix keeps one token of
    // its own (its last position gives its first logits).
    let mut nested = prompts.clone();
    let prefix = format!("[label] {shots}");
    let ids = |t: &str| tok.encode(t).unwrap();
    assert!(prompts.iter().all(|p| ids(p).starts_with(&ids(&prefix))));
    nested.push(prefix);
    let batched = generate(&s.model, &s.tokenizer, &nested, 8, 8, DType::F32).unwrap();
    let alone = generate(&s.model, &s.tokenizer, &nested[4..], 8, 1, DType::F32).unwrap();
    assert_eq!(batched[4], alone[0]);
}

#[test]
fn fresh_weights_are_fixed_by_the_seed() {
    let cfg = Config::tiny(50, 16, 1, 2, 1);
    let a = ParamStore::init(&cfg.parameter_shapes(), 0.02, 5, &Device::Cpu).unwrap();
    let b = ParamStore::init(&cfg.parameter_shapes(), 0.02, 5, &Device::Cpu).unwrap();
    let c = ParamStore::init(&cfg.parameter_shapes(), 0.02, 6, &Device::Cpu).unwrap();
    let get = |p: &ParamStore| {
        p.get("model.embed_tokens.weight")
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_eq!(get(&a), get(&b));
    assert_ne!(get(&a), get(&c));
    let _ = Path::new("");
}

/// The encoder-decoder student through the same trainer: the prompt feeds the
/// encoder, the target the decoder; it learns, saves and reloads.
#[test]
fn a_tiny_t5_student_trains_end_to_end_and_reloads() {
    let data = toy(100, 1);
    let tok = tokenizer(&data);
    let mut t5 = T5Config::small(0);
    t5.d_model = 32;
    t5.d_kv = 8;
    t5.num_heads = 4;
    t5.d_ff = 64;
    t5.num_layers = 2;
    t5.relative_attention_num_buckets = 16;
    t5.relative_attention_max_distance = 32;
    let mut s = Student::from_scratch(t5, tok.clone(), 1, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(400);
    c.dropout = 0.0;
    c.optimizer.lr = 1e-2;
    let val = validation(&data[..16]);
    let summary = train(dir.path(), &mut s, &c, &data, &val, DType::F32, |_| {}).unwrap();
    let train_lines = train_log(dir.path());
    let (first, last) = first_and_last_loss(&train_lines);
    eprintln!("t5: loss {first:.3} -> {last:.3}; {summary:?}");
    assert!(last < first * 0.25, "loss fell only from {first} to {last}");
    assert!(summary.best_accuracy.unwrap() > 0.5, "{:?}", summary.best_accuracy);
    s.save_dir(&dir.path().join("saved")).unwrap();
    let back = Student::load_dir(&dir.path().join("saved"), &Device::Cpu).unwrap();
    assert!(matches!(back.config, ModelConfig::T5(_)));
    let ids = Tensor::new(&[[1u32, 2, 3, 4, 5], [6, 7, 8, 0, 0]], &Device::Cpu).unwrap();
    assert_eq!(logits(&s, &ids), logits(&back, &ids));
    let text = std::fs::read_to_string(dir.path().join("final/config.json")).unwrap();
    assert!(text.contains("\"model_type\": \"t5\"") && text.contains("relative_attention_num_buckets"));
}

#[test]
fn only_the_newest_checkpoints_are_kept_when_asked() {
    let data = toy(16, 6);
    let tok = tokenizer(&data);
    let mut s = student(&tok);
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(8);
    c.keep_checkpoints = 2;
    train(dir.path(), &mut s, &c, &data, &[], DType::F32, |_| {}).unwrap();
    let mut left: Vec<String> = std::fs::read_dir(dir.path().join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["step-00000004", "step-00000008"]);
    // Keeping fewer is not a different training run: resuming is allowed.
    let mut again = c.clone();
    again.keep_checkpoints = 0;
    assert_eq!(again.hash(), c.hash());
}

#[test]
fn rows_that_end_or_are_dropped_leave_the_batch_without_changing_the_others() {
    let data = toy(48, 6);
    let tok = tokenizer(&data);
    let mut s = student(&tok);
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(30);
    c.dropout = 0.0;
    c.optimizer.lr = 3e-3;
    train(dir.path(), &mut s, &c, &data, &[], DType::F32, |_| {}).unwrap();
    let m = s.model.llama().unwrap();
    let prompts: Vec<Vec<u32>> = ["add 1 2", "add 9 0 4 7 7 1 2", "add 5", "add 3 3"]
        .iter()
        .map(|p| tok.encode(&prompt(Task::Rationale, p)).unwrap())
        .collect();
    let refs: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
    // Rows of different lengths end at different steps; one samples.
    let mut opts = vec![
        Decode::greedy(2),
        Decode::greedy(12),
        Decode::greedy(5),
        Decode::greedy(12),
    ];
    opts[3].temperature = 0.9;
    opts[3].seed = 7;
    let batched = decode_batch(m, &tok, &refs, &opts, DType::F32).unwrap();
    for (r, p) in refs.iter().enumerate() {
        let alone = decode_batch(m, &tok, std::slice::from_ref(p), &opts[r..=r], DType::F32).unwrap();
        assert_eq!(
            alone[0], batched[r],
            "row {r} alone and in a batch whose rows end early"
        );
    }
    assert!(batched[1].ids.len() > 3, "row 1 runs long enough to be dropped midway");
    // A row whose reader has gone stops at once; the others go on unchanged.
    let mut calls = [0usize; 4];
    let dropped = decode_batch_with(m, &tok, &refs, &opts, DType::F32, &mut |r, _| {
        calls[r] += 1;
        !(r == 1 && calls[r] >= 3)
    })
    .unwrap();
    assert_eq!(
        calls[1], 3,
        "the dropped row is not decoded past the step its reader left"
    );
    assert_eq!(dropped[1].ids, batched[1].ids[..3].to_vec());
    for r in [0, 2, 3] {
        assert_eq!(dropped[r], batched[r], "row {r} after row 1 was dropped");
    }
}
