//! GGUF export: llama and qwen2 students written as f16, q8_0 and q4_k_m
//! files hold llama.cpp's metadata, tensor names and types; the f16 file
//! reads back (through the project's own GGUF reader) to the same weights
//! and logits, the quantised ones to nearly the same perplexity; the
//! tokenizer and chat template survive; T5 and adapter students are refused.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::Value;
use candle_core::{DType, Device, Tensor};
use candle_nn::Optimizer;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use stepwise_student::gguf::{GgufFile, hf_name};
use stepwise_student::gguf_export::{ExportSummary, GgufType, export_gguf, gguf_name};
use stepwise_student::lora::LoraConfig;
use stepwise_student::{Config, Student, StudentError, StudentTokenizer, T5Config};
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// The text the perplexity test memorises (and the tokenizers train on).
const TEXT: &str = "The student reads the question, writes a short rationale, and then \
gives the answer: 12 plus 30 is 42, so the answer is 42.";

const TYPES: [GgufType; 3] = [GgufType::F16, GgufType::Q8_0, GgufType::Q4KM];

fn corpus() -> Vec<String> {
    let mut v: Vec<String> = [
        TEXT,
        "Question: what is 7 times 6? Rationale: 7 times 6 is 42. Answer: 42.",
        "Héllo wörld, naïve café: unicode text tokenizes byte by byte.",
        "A teacher labels each example; the student learns from the labels and the rationales.",
        "Line one\nline two\n\n  indented line three\twith a tab.",
        "It's what they'll say, isn't it? We've seen it; you'd agree.",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let copy = v.clone();
    v.extend(copy);
    v
}

/// SmolLM-style: digits one by one, then GPT-2's byte-level split.
fn smollm_tokenizer() -> StudentTokenizer {
    StudentTokenizer::train_bpe(corpus().iter(), 320).unwrap()
}

/// Qwen2-style: NFC, Qwen2's split regex, byte level without a regex; a
/// ChatML template.
fn qwen_tokenizer() -> StudentTokenizer {
    let special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let mut trainer = TrainerWrapper::BpeTrainer(
        BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(320)
            .min_frequency(2)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .special_tokens(special.iter().map(|s| AddedToken::from(*s, true)).collect())
            .build(),
    );
    let mut tok = Tokenizer::new(BPE::default());
    tok.with_normalizer(Some(NFC));
    let split = Split::new(
        SplitPattern::Regex(QWEN2_SPLIT.into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .unwrap();
    tok.with_pre_tokenizer(Some(Sequence::new(vec![
        split.into(),
        ByteLevel::new(false, false, false).into(),
    ])));
    tok.with_decoder(Some(ByteLevel::default()));
    tok.train(&mut trainer, corpus().iter()).unwrap();
    let mut st = StudentTokenizer::from_tokenizer(tok, "the qwen2-style tokenizer").unwrap();
    st.chat_template = Some(CHATML.into());
    st
}

/// A decoder whose matrices have rows of 256 or 512, so q4_K and q6_K apply.
fn decoder_config(model_type: &str) -> Config {
    let mut c = Config::tiny(0, 256, 2, 4, 2);
    c.intermediate_size = 512;
    c.model_type = model_type.into();
    if model_type == "qwen2" {
        c.tie_word_embeddings = false;
        c.rope_theta = 1_000_000.0;
        c.rms_norm_eps = 1e-6;
        c.architectures = vec!["Qwen2ForCausalLM".into()];
    }
    c
}

/// A fresh student whose norm weights and biases are random too (they are
/// ones and zeros at init), so a misplaced one shows.
fn student(model_type: &str, seed: u64) -> Student {
    let (tok, bos) = match model_type {
        "qwen2" => {
            let tok = qwen_tokenizer();
            let bos = tok.inner.token_to_id("<|endoftext|>");
            (tok, bos)
        }
        _ => (smollm_tokenizer(), None),
    };
    let mut c = decoder_config(model_type);
    c.bos_token_id = bos;
    let s = Student::from_scratch(c, tok, seed, &Device::Cpu).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (name, var) in s.params.vars() {
        if var.rank() == 1 {
            let base = if name.ends_with(".bias") { 0.0 } else { 1.0 };
            let v: Vec<f32> = (0..var.elem_count())
                .map(|_| base + (rng.random::<f32>() - 0.5) * 0.2)
                .collect();
            var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    s
}

fn export(s: &Student, dir: &Path, ty: GgufType) -> (std::path::PathBuf, ExportSummary) {
    let path = dir.join(format!("student-{ty}.gguf"));
    let summary = export_gguf(s, &path, ty).unwrap();
    (path, summary)
}

fn llama_config(s: &Student) -> &Config {
    s.config.llama().unwrap()
}

/// Teacher-forced logits for `rows` (equal lengths).
fn logits(s: &Student, rows: &[Vec<u32>]) -> Tensor {
    let t = rows[0].len();
    let flat: Vec<u32> = rows.iter().flatten().copied().collect();
    let ids = Tensor::from_vec(flat, (rows.len(), t), &Device::Cpu).unwrap();
    s.model
        .llama()
        .unwrap()
        .forward_train(&ids, &vec![t; rows.len()], None, DType::F32)
        .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// exp of the mean next-token NLL of `ids`.
fn perplexity(s: &Student, ids: &[u32]) -> f64 {
    let l = logits(s, &[ids.to_vec()]).squeeze(0).unwrap();
    let lp = candle_nn::ops::log_softmax(&l, 1).unwrap();
    let lp: Vec<Vec<f32>> = lp.to_vec2().unwrap();
    let nll: f64 = (0..ids.len() - 1).map(|i| -(lp[i][ids[i + 1] as usize] as f64)).sum();
    (nll / (ids.len() - 1) as f64).exp()
}

/// A few rows of token ids from the student's own tokenizer.
fn rows(s: &Student) -> Vec<Vec<u32>> {
    let ids = s.tokenizer.encode(TEXT).unwrap();
    vec![ids[..16].to_vec(), ids[8..24].to_vec(), ids[ids.len() - 16..].to_vec()]
}

fn meta<'a>(f: &'a GgufFile, key: &str) -> &'a Value {
    f.content
        .metadata
        .get(key)
        .unwrap_or_else(|| panic!("metadata key {key} is missing"))
}

fn meta_u32(f: &GgufFile, key: &str) -> u32 {
    meta(f, key).to_u32().unwrap()
}

fn meta_str<'a>(f: &'a GgufFile, key: &str) -> &'a str {
    meta(f, key).to_string().unwrap()
}

fn types_of(f: &GgufFile) -> BTreeMap<String, GgmlDType> {
    f.content
        .tensor_infos
        .iter()
        .map(|(k, v)| (k.clone(), v.ggml_dtype))
        .collect()
}

/// The metadata and tensors llama.cpp's converter writes, for every type.
fn check_layout(model_type: &str) {
    let s = student(model_type, 3);
    let c = llama_config(&s).clone();
    let dir = tempfile::tempdir().unwrap();
    for ty in TYPES {
        let (path, summary) = export(&s, dir.path(), ty);
        let f = GgufFile::open(&path).unwrap();
        let arch = model_type;
        assert_eq!(meta_str(&f, "general.architecture"), arch);
        assert_eq!(meta_str(&f, "general.name"), format!("student-{ty}"));
        assert_eq!(meta_u32(&f, "general.file_type"), ty.file_type());
        assert_eq!(meta_u32(&f, "general.quantization_version"), 2);
        for (key, want) in [
            ("context_length", c.max_position_embeddings),
            ("embedding_length", 256),
            ("block_count", 2),
            ("feed_forward_length", 512),
            ("attention.head_count", 4),
            ("attention.head_count_kv", 2),
            ("vocab_size", c.vocab_size),
            ("rope.dimension_count", 64),
        ] {
            assert_eq!(meta_u32(&f, &format!("{arch}.{key}")) as usize, want, "{arch}.{key}");
        }
        let f32_of = |k: &str| meta(&f, &format!("{arch}.{k}")).to_f32().unwrap();
        assert_eq!(f32_of("rope.freq_base"), c.rope_theta as f32);
        assert_eq!(f32_of("attention.layer_norm_rms_epsilon"), c.rms_norm_eps as f32);
        assert_eq!(meta_str(&f, "tokenizer.ggml.model"), "gpt2");
        let pre = if arch == "qwen2" { "qwen2" } else { "smollm" };
        assert_eq!(meta_str(&f, "tokenizer.ggml.pre"), pre);
        assert_eq!(meta(&f, "tokenizer.ggml.tokens").to_vec().unwrap().len(), c.vocab_size);
        assert_eq!(
            meta(&f, "tokenizer.ggml.token_type").to_vec().unwrap().len(),
            c.vocab_size
        );
        assert!(!meta(&f, "tokenizer.ggml.merges").to_vec().unwrap().is_empty());
        assert!(!meta(&f, "tokenizer.ggml.add_bos_token").to_bool().unwrap());
        assert_eq!(meta_u32(&f, "tokenizer.ggml.eos_token_id"), s.tokenizer.eos_id);
        assert_eq!(meta_u32(&f, "tokenizer.ggml.padding_token_id"), s.tokenizer.pad_id);
        assert_eq!(
            f.content
                .metadata
                .get("tokenizer.ggml.bos_token_id")
                .map(|v| v.to_u32().unwrap()),
            c.bos_token_id
        );
        // End-of-text and the ChatML markers are control tokens.
        let types = meta(&f, "tokenizer.ggml.token_type").to_vec().unwrap();
        assert_eq!(types[s.tokenizer.eos_id as usize].to_i32().unwrap(), 3);
        let normal = s.tokenizer.inner.token_to_id("Ġthe").unwrap();
        assert_eq!(types[normal as usize].to_i32().unwrap(), 1);

        // Tensor names and types: every parameter under llama.cpp's name.
        let types = types_of(&f);
        let mut want: BTreeMap<String, GgmlDType> = BTreeMap::new();
        let matrix = match ty {
            GgufType::F16 => GgmlDType::F16,
            GgufType::Q8_0 => GgmlDType::Q8_0,
            GgufType::Q4KM => GgmlDType::Q4K,
        };
        let head_q4 = if ty == GgufType::Q4KM { GgmlDType::Q6K } else { matrix };
        want.insert(
            "token_embd.weight".into(),
            if c.tie_word_embeddings { head_q4 } else { matrix },
        );
        want.insert("output_norm.weight".into(), GgmlDType::F32);
        if !c.tie_word_embeddings {
            want.insert("output.weight".into(), head_q4);
        }
        for l in 0..2 {
            // llama.cpp's use_more_bits(l, 2): layer 1 only.
            let more = if ty == GgufType::Q4KM && l == 1 {
                GgmlDType::Q6K
            } else {
                matrix
            };
            for (n, t) in [
                ("attn_norm.weight", GgmlDType::F32),
                ("ffn_norm.weight", GgmlDType::F32),
                ("attn_q.weight", matrix),
                ("attn_k.weight", matrix),
                ("attn_v.weight", more),
                ("attn_output.weight", matrix),
                ("ffn_gate.weight", matrix),
                ("ffn_up.weight", matrix),
                ("ffn_down.weight", more),
            ] {
                want.insert(format!("blk.{l}.{n}"), t);
            }
            if arch == "qwen2" {
                for n in ["attn_q.bias", "attn_k.bias", "attn_v.bias"] {
                    want.insert(format!("blk.{l}.{n}"), GgmlDType::F32);
                }
            }
        }
        assert_eq!(types, want, "{arch} {ty}");
        // ggml order: the row length first.
        let embd = &f.content.tensor_infos["token_embd.weight"];
        assert_eq!(embd.shape.dims(), &[c.vocab_size, 256], "candle reads ne back reversed");

        assert_eq!(summary.tensors, want.len());
        assert_eq!(summary.bytes, std::fs::metadata(&path).unwrap().len());
        assert_eq!(summary.by_type.values().sum::<usize>(), want.len());
        eprintln!("{arch} {ty}: {} bytes, {:?}", summary.bytes, summary.by_type);
    }
    // Written atomically: nothing but the three files is left.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["student-f16.gguf", "student-q4_k_m.gguf", "student-q8_0.gguf"]);
}

#[test]
fn a_llama_export_has_llama_cpp_metadata_tensor_names_and_types() {
    check_layout("llama");
}

#[test]
fn a_qwen2_export_has_llama_cpp_metadata_tensor_names_and_types() {
    check_layout("qwen2");
}

#[test]
fn gguf_names_invert_the_readers_mapping() {
    for ty in ["llama", "qwen2"] {
        let mut c = decoder_config(ty);
        c.vocab_size = 10;
        c.tie_word_embeddings = false;
        for hf in c.parameter_shapes().keys() {
            let g = gguf_name(hf).unwrap_or_else(|| panic!("no GGUF name for {hf}"));
            assert_eq!(hf_name(&g).as_deref(), Some(hf.as_str()), "{g}");
        }
    }
}

/// The f16 file reads back to the same config, the weights rounded to f16
/// (q/k rows in HF order again), and logits within f16's rounding.
fn check_f16_round_trip(model_type: &str) {
    let s = student(model_type, 5);
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = export(&s, dir.path(), GgufType::F16);
    let back = Student::from_gguf(&path, &Device::Cpu).unwrap();

    let (a, b) = (llama_config(&s), llama_config(&back));
    let mut b = b.clone();
    assert_eq!(b.rms_norm_eps as f32, a.rms_norm_eps as f32);
    b.rms_norm_eps = a.rms_norm_eps;
    assert_eq!(&b, a, "the config survives (eps as f32)");

    for (name, var) in s.params.vars() {
        let want = var.as_tensor();
        let want = if want.rank() == 2 {
            want.to_dtype(DType::F16).unwrap().to_dtype(DType::F32).unwrap()
        } else {
            want.clone()
        };
        let got = back.params.get(name).unwrap();
        assert_eq!(max_abs_diff(&want, &got), 0.0, "{name}");
    }

    let rows = rows(&s);
    let (l0, l1) = (logits(&s, &rows), logits(&back, &rows));
    let diff = max_abs_diff(&l0, &l1);
    let scale: f32 = l0
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap();
    eprintln!("{model_type} f16: max abs logit diff {diff:.3e} (logits up to {scale:.3})");
    assert!(diff < 2e-3 * scale.max(1.0), "{model_type}: logits differ by {diff}");
}

#[test]
fn a_llama_f16_export_reads_back_with_the_same_logits() {
    check_f16_round_trip("llama");
}

#[test]
fn a_qwen2_f16_export_reads_back_with_the_same_logits() {
    check_f16_round_trip("qwen2");
}

/// Trains the student to memorise `ids` so that quantisation error shows in
/// its perplexity (a random model's is the vocabulary size whatever the
/// weights).
fn memorise(s: &Student, ids: &[u32], steps: usize) {
    let vars: Vec<_> = s.params.vars().values().cloned().collect();
    let params = candle_nn::ParamsAdamW {
        lr: 3e-3,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut opt = candle_nn::AdamW::new(vars, params).unwrap();
    let t = ids.len();
    let input = Tensor::from_vec(ids[..t - 1].to_vec(), (1, t - 1), &Device::Cpu).unwrap();
    let target = Tensor::from_vec(ids[1..].to_vec(), t - 1, &Device::Cpu).unwrap();
    for _ in 0..steps {
        let l = s
            .model
            .llama()
            .unwrap()
            .forward_train(&input, &[t - 1], None, DType::F32)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let loss = candle_nn::loss::cross_entropy(&l, &target).unwrap();
        opt.backward_step(&loss).unwrap();
    }
}

fn check_quantised_perplexity(model_type: &str) {
    let s = student(model_type, 7);
    let ids = s.tokenizer.encode(TEXT).unwrap();
    let before = perplexity(&s, &ids);
    memorise(&s, &ids, 20);
    let trained = perplexity(&s, &ids);
    assert!(
        trained < 5.0,
        "{model_type}: memorised to perplexity {trained} only (from {before})"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut ppl = BTreeMap::new();
    for ty in TYPES {
        let (path, _) = export(&s, dir.path(), ty);
        let back = Student::from_gguf(&path, &Device::Cpu).unwrap();
        ppl.insert(ty.as_str(), perplexity(&back, &ids));
    }
    let f16 = ppl["f16"];
    eprintln!(
        "{model_type}: perplexity {before:.1} at init, {trained:.4} trained; f16 {f16:.4}, \
         q8_0 {:.4} (x{:.4}), q4_k_m {:.4} (x{:.4})",
        ppl["q8_0"],
        ppl["q8_0"] / f16,
        ppl["q4_k_m"],
        ppl["q4_k_m"] / f16
    );
    assert!((f16 / trained - 1.0).abs() < 0.01, "f16 {f16} against {trained}");
    for ty in ["q8_0", "q4_k_m"] {
        let ratio = ppl[ty] / f16;
        assert!((ratio - 1.0).abs() < 0.10, "{model_type} {ty}: perplexity x{ratio}");
    }
}

#[test]
fn a_quantised_llama_export_keeps_perplexity_within_ten_percent() {
    check_quantised_perplexity("llama");
}

#[test]
fn a_quantised_qwen2_export_keeps_perplexity_within_ten_percent() {
    check_quantised_perplexity("qwen2");
}

#[test]
fn the_tokenizer_round_trips_with_its_special_ids_and_chat_template() {
    let strings = [
        TEXT,
        "12 plus 30 is 42",
        "Héllo wörld, naïve café!",
        "Line one\nline two\n\n  indented\tthree",
        "It's what they'll say, isn't it?",
        "<|endoftext|>tail",
        "unseen words: zebra quokka 9876543210",
    ];
    let dir = tempfile::tempdir().unwrap();
    for model_type in ["llama", "qwen2"] {
        let s = student(model_type, 11);
        let (path, _) = export(&s, dir.path(), GgufType::Q8_0);
        let back = GgufFile::open(&path).unwrap().tokenizer().unwrap();
        let mut all: Vec<&str> = strings.to_vec();
        if model_type == "qwen2" {
            all.push("<|im_start|>user\nWhat is 6 times 7?<|im_end|>\n<|im_start|>assistant\n");
        }
        for text in all {
            let (a, b) = (s.tokenizer.encode(text).unwrap(), back.encode(text).unwrap());
            assert_eq!(a, b, "{model_type}: {text:?}");
            assert_eq!(back.decode(&b).unwrap(), s.tokenizer.decode(&a).unwrap());
        }
        assert_eq!(back.vocab_size(), s.tokenizer.vocab_size());
        assert_eq!(back.eos_id, s.tokenizer.eos_id, "{model_type}: eos");
        assert_eq!(back.pad_id, s.tokenizer.pad_id, "{model_type}: pad");
        assert!(back.is_stop(s.tokenizer.eos_id));
        assert_eq!(
            back.chat_template, s.tokenizer.chat_template,
            "{model_type}: chat template"
        );
        if model_type == "qwen2" {
            let msgs = [stepwise_student::ChatMessage {
                role: "user".into(),
                content: "hi".into(),
            }];
            assert_eq!(
                back.render_chat(&msgs).unwrap(),
                s.tokenizer.render_chat(&msgs).unwrap()
            );
            assert!(back.is_stop(back.inner.token_to_id("<|im_end|>").unwrap()));
        } else {
            assert!(back.chat_template.is_none());
        }
    }
}

#[test]
fn rows_that_are_not_a_multiple_of_the_block_fall_back_to_q8_0_or_f16() {
    // Rows of 64 (a multiple of 32, not of 256) and ffn_down's of 80 (not of 32).
    let mut c = Config::tiny(0, 64, 1, 4, 2);
    c.intermediate_size = 80;
    let s = Student::from_scratch(c, smollm_tokenizer(), 1, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (ty, matrix) in [
        (GgufType::Q4KM, GgmlDType::Q8_0),
        (GgufType::Q8_0, GgmlDType::Q8_0),
        (GgufType::F16, GgmlDType::F16),
    ] {
        let (path, _) = export(&s, dir.path(), ty);
        let f = GgufFile::open(&path).unwrap();
        let types = types_of(&f);
        for (name, t) in &types {
            let want = if name.ends_with("_norm.weight") {
                GgmlDType::F32
            } else if name.ends_with("ffn_down.weight") {
                GgmlDType::F16
            } else {
                matrix
            };
            assert_eq!(*t, want, "{ty} {name}");
        }
        let back = Student::from_gguf(&path, &Device::Cpu).unwrap();
        let rows = rows(&s);
        let diff = max_abs_diff(&logits(&s, &rows), &logits(&back, &rows));
        assert!(diff < 0.05, "{ty}: logits differ by {diff}");
    }
}

#[test]
fn t5_and_adapter_students_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.gguf");

    let mut t5 = T5Config::small(0);
    t5.d_model = 16;
    t5.d_kv = 4;
    t5.d_ff = 24;
    t5.num_layers = 1;
    t5.num_heads = 2;
    let s = Student::from_scratch(t5, smollm_tokenizer(), 1, &Device::Cpu).unwrap();
    let err = export_gguf(&s, &path, GgufType::F16).unwrap_err();
    assert!(matches!(err, StudentError::Config(_)), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("llama and qwen2") && msg.contains("t5"), "{msg}");

    let mut c = Config::tiny(0, 32, 1, 4, 2);
    c.intermediate_size = 64;
    let s = Student::from_scratch(c, smollm_tokenizer(), 1, &Device::Cpu)
        .unwrap()
        .with_lora(&LoraConfig::default(), Path::new("base"), 1)
        .unwrap();
    let err = export_gguf(&s, &path, GgufType::F16).unwrap_err();
    assert!(matches!(err, StudentError::Config(_)), "{err}");
    assert!(err.to_string().contains("Student::merged()"), "{err}");
    // Merged, it exports.
    export_gguf(&s.merged().unwrap(), &path, GgufType::F16).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "no temporary file is left behind");
}

#[test]
fn gguf_types_parse_and_print_as_llama_cpp_names_them() {
    for ty in TYPES {
        assert_eq!(ty.to_string().parse::<GgufType>().unwrap(), ty);
    }
    assert_eq!("Q4_K_M".parse::<GgufType>().unwrap(), GgufType::Q4KM);
    assert_eq!(GgufType::F16.file_type(), 1);
    assert_eq!(GgufType::Q8_0.file_type(), 7);
    assert_eq!(GgufType::Q4KM.file_type(), 15);
    let err = "q5_k_s".parse::<GgufType>().unwrap_err().to_string();
    assert!(err.contains("\"q5_k_s\"") && err.contains("q4_k_m"), "{err}");
}
