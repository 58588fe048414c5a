//! GGUF files stepwise exports open in llama.cpp's own Python package,
//! gguf-py (`gguf` on PyPI): the judge is `tests/python/gguf_read.py`.
//!
//! A tiny llama (tied embeddings, SmolLM-style tokenizer) and a tiny qwen2
//! (untied, q/k/v biases, Qwen2-style tokenizer with ChatML markers, a chat
//! template and a BOS id) are exported at f16, q8_0 and q4_k_m. What the
//! judge checks comes from the Rust side: the metadata from the student's
//! config and tokenizer, the tensor list (file order, ggml types, shapes) from
//! the file re-opened with stepwise's reader and matched against the
//! [`ExportSummary`], and sampled values from stepwise's dequantization, which
//! gguf-py's must reproduce.

mod common;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};
use serde_json::{Map, Value as Json, json};
use stepwise_student::gguf::GgufFile;
use stepwise_student::gguf_export::{ExportSummary, GgufType, export_gguf, ggml_type_name};
use stepwise_student::{Config, Student, StudentTokenizer};

const TYPES: [GgufType; 3] = [GgufType::F16, GgufType::Q8_0, GgufType::Q4KM];

/// Qwen2's pre-tokenizer regex, as its `tokenizer.json` has it.
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// Values sampled per tensor for the judge to compare.
const SAMPLES: usize = 16;

/// The venv's Python if it imports `gguf` and `numpy`; otherwise `None` after
/// `common::require` (a skip locally, a failure under CI).
fn python_with_gguf() -> Option<PathBuf> {
    let py = common::python();
    let ok = py.exists()
        && Command::new(&py)
            .args(["-c", "import gguf, numpy"])
            .output()
            .is_ok_and(|o| o.status.success());
    common::require(&format!("{} with gguf, numpy", py.display()), ok).then_some(py)
}

fn corpus() -> Vec<&'static str> {
    let texts = [
        "The student reads the question, writes a short rationale, and then gives the answer.",
        "Question: what is 7 times 6? Rationale: 7 times 6 is 42. Answer: 42.",
        "Héllo wörld, naïve café: unicode text tokenizes byte by byte.",
        "It's what they'll say, isn't it? We've seen it; you'd agree.",
    ];
    texts.iter().cycle().take(24).copied().collect()
}

/// SmolLM-style: digits one by one, then GPT-2's byte-level split.
fn smollm_tokenizer() -> StudentTokenizer {
    StudentTokenizer::train_bpe(corpus().into_iter(), 320).unwrap()
}

/// Qwen2-style, without a `tokenizers` dependency: the trained tokenizer's
/// JSON with NFC, Qwen2's split then byte level without a regex, and the
/// ChatML markers as special tokens; a ChatML template.
fn qwen_tokenizer() -> StudentTokenizer {
    let base = smollm_tokenizer();
    let mut j: Json = serde_json::from_str(&base.inner.to_string(false).unwrap()).unwrap();
    j["normalizer"] = json!({"type": "NFC"});
    j["pre_tokenizer"] = json!({
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        ],
    });
    let n = base.inner.get_vocab_size(true);
    let added = j["added_tokens"].as_array_mut().unwrap();
    for (i, s) in ["<|im_start|>", "<|im_end|>"].iter().enumerate() {
        added.push(json!({
            "id": n + i, "content": s, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true,
        }));
    }
    let mut tok = StudentTokenizer::from_tokenizer(j.to_string().parse().unwrap(), "qwen2-style").unwrap();
    let end = tok.inner.token_to_id("<|im_end|>").unwrap();
    assert_eq!(end as usize, n + 1, "the markers follow the vocabulary");
    tok.add_stop(end);
    tok.chat_template = Some(CHATML.into());
    tok
}

/// Seeded values uniform in `[-1, 1)` (SplitMix64).
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

/// A decoder whose matrices have rows of 256 or 512, so q4_K and q6_K apply;
/// its norm weights and biases are noise (not ones and zeros), so a tensor
/// read from the wrong place shows in the values.
fn student(model_type: &str) -> Student {
    let mut c = Config::tiny(0, 256, 2, 4, 2);
    c.intermediate_size = 512;
    c.model_type = model_type.into();
    let tok = if model_type == "qwen2" {
        c.tie_word_embeddings = false;
        c.rope_theta = 1_000_000.0;
        c.rms_norm_eps = 1e-6;
        c.architectures = vec!["Qwen2ForCausalLM".into()];
        let tok = qwen_tokenizer();
        c.bos_token_id = tok.inner.token_to_id("<|endoftext|>");
        tok
    } else {
        smollm_tokenizer()
    };
    let s = Student::from_scratch(c, tok, 3, &Device::Cpu).unwrap();
    for (i, (name, var)) in s.params.vars().iter().enumerate() {
        if var.rank() == 1 {
            let base = if name.ends_with(".bias") { 0.0 } else { 1.0 };
            let v: Vec<f32> = noise(var.elem_count(), 100 + i as u64)
                .iter()
                .map(|x| base + 0.2 * x)
                .collect();
            var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    s
}

fn typed(ty: &str, value: Json) -> Json {
    json!({"type": ty, "value": value})
}

/// The metadata llama.cpp's loader reads, with the value types it insists on,
/// from the student's config and tokenizer.
fn expected_metadata(s: &Student, ty: GgufType) -> (Map<String, Json>, Vec<String>) {
    let c = s.config.llama().unwrap();
    let arch = c.model_type.as_str();
    let u32 = |v: usize| typed("UINT32", json!(v));
    // Exactly the f32 the file holds, widened.
    let f32 = |v: f64| typed("FLOAT32", json!(v as f32 as f64));
    let string = |v: &str| typed("STRING", json!(v));
    let mut md = Map::new();
    let mut put = |k: String, v: Json| {
        md.insert(k, v);
    };
    put("general.architecture".into(), string(arch));
    put("general.file_type".into(), u32(ty.file_type() as usize));
    put("general.quantization_version".into(), u32(2));
    for (key, v) in [
        ("block_count", c.num_hidden_layers),
        ("context_length", c.max_position_embeddings),
        ("embedding_length", c.hidden_size),
        ("feed_forward_length", c.intermediate_size),
        ("attention.head_count", c.num_attention_heads),
        ("attention.head_count_kv", c.num_key_value_heads),
        ("vocab_size", c.vocab_size),
        ("rope.dimension_count", c.head_dim()),
    ] {
        put(format!("{arch}.{key}"), u32(v));
    }
    put(format!("{arch}.rope.freq_base"), f32(c.rope_theta));
    put(format!("{arch}.attention.layer_norm_rms_epsilon"), f32(c.rms_norm_eps));
    put("tokenizer.ggml.model".into(), string("gpt2"));
    put(
        "tokenizer.ggml.pre".into(),
        string(if arch == "qwen2" { "qwen2" } else { "smollm" }),
    );
    put("tokenizer.ggml.eos_token_id".into(), u32(s.tokenizer.eos_id as usize));
    put(
        "tokenizer.ggml.padding_token_id".into(),
        u32(s.tokenizer.pad_id as usize),
    );
    put("tokenizer.ggml.add_bos_token".into(), typed("BOOL", json!(false)));
    let mut absent = Vec::new();
    match c.bos_token_id {
        Some(b) => put("tokenizer.ggml.bos_token_id".into(), u32(b as usize)),
        None => absent.push("tokenizer.ggml.bos_token_id".to_string()),
    }
    match &s.tokenizer.chat_template {
        Some(t) => put("tokenizer.chat_template".into(), string(t)),
        None => absent.push("tokenizer.chat_template".to_string()),
    }
    (md, absent)
}

/// The file's tensors in file order, as stepwise's reader sees them: ggml
/// type, shape (PyTorch order: outermost first), and sampled values of the
/// dequantized tensor.
fn expected_tensors(path: &Path, summary: &ExportSummary) -> Vec<Json> {
    let f = GgufFile::open(path).unwrap();
    let mut infos: Vec<_> = f.content.tensor_infos.iter().collect();
    infos.sort_by_key(|(_, info)| info.offset);
    let mut by_type: BTreeMap<String, usize> = BTreeMap::new();
    let mut reader = BufReader::new(File::open(path).unwrap());
    let mut out = Vec::new();
    for (name, info) in infos {
        let t = ggml_type_name(info.ggml_dtype);
        *by_type.entry(t.to_string()).or_insert(0) += 1;
        let values: Vec<f32> = f
            .content
            .tensor(&mut reader, name, &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let n = values.len();
        let sample: Vec<f64> = (0..SAMPLES).map(|k| values[k * n / SAMPLES] as f64).collect();
        let sum_abs: f64 = values.iter().map(|x| x.abs() as f64).sum();
        out.push(json!({
            "name": name,
            "type": t,
            "shape": info.shape.dims(),
            "sample": sample,
            "sum_abs": sum_abs,
        }));
    }
    assert_eq!(out.len(), summary.tensors, "{}: tensors", path.display());
    assert_eq!(by_type, summary.by_type, "{}: types", path.display());
    out
}

fn expected(s: &Student, path: &Path, ty: GgufType, summary: &ExportSummary) -> Json {
    let (metadata, absent) = expected_metadata(s, ty);
    let c = s.config.llama().unwrap();
    let tok: Json = serde_json::from_str(&s.tokenizer.inner.to_string(false).unwrap()).unwrap();
    let merges = tok["model"]["merges"].as_array().unwrap().len();
    let eos = s.tokenizer.eos_id;
    let mut token_strings = Map::new();
    token_strings.insert(eos.to_string(), json!("<|endoftext|>"));
    if let Some(end) = s.tokenizer.inner.token_to_id("<|im_end|>") {
        token_strings.insert(end.to_string(), json!("<|im_end|>"));
    }
    json!({
        "metadata": metadata,
        "absent": absent,
        "tokens": c.vocab_size,
        "merges": merges,
        "token_strings": token_strings,
        "tensors": expected_tensors(path, summary),
        "by_type": summary.by_type,
    })
}

/// Runs the judge on one file; prints its output and fails if it fails.
fn judge(py: &Path, gguf: &Path, expected: &Path) -> String {
    let out = Command::new(py)
        .arg(common::root().join("tests/python/gguf_read.py"))
        .args([gguf, expected])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("gguf_read.py:\n{text}");
    assert!(
        out.status.success(),
        "gguf_read.py failed on {}:\n{text}",
        gguf.display()
    );
    assert!(text.contains("OK:"), "{text}");
    text
}

#[test]
fn the_gguf_package_reads_an_exported_students_metadata_and_tensors() {
    let Some(py) = python_with_gguf() else { return };
    let dir = tempfile::tempdir().unwrap();
    for model_type in ["llama", "qwen2"] {
        let s = student(model_type);
        for ty in TYPES {
            let path = dir.path().join(format!("{model_type}-{ty}.gguf"));
            let summary = export_gguf(&s, &path, ty).unwrap();
            let want = expected(&s, &path, ty, &summary);
            // The layouts differ where they should: q4_k_m mixes in q6_K.
            let types: Vec<&str> = want["by_type"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            let matrix = match ty {
                GgufType::F16 => vec!["f16", "f32"],
                GgufType::Q8_0 => vec!["f32", "q8_0"],
                GgufType::Q4KM => vec!["f32", "q4_K", "q6_K"],
            };
            assert_eq!(types, matrix, "{model_type} {ty}");
            let names: Vec<&str> = want["tensors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["name"].as_str().unwrap())
                .collect();
            assert_eq!(names.contains(&"output.weight"), model_type == "qwen2", "tied or not");
            assert_eq!(names.contains(&"blk.0.attn_q.bias"), model_type == "qwen2", "biases");
            let exp_path = dir.path().join(format!("{model_type}-{ty}.json"));
            std::fs::write(&exp_path, serde_json::to_string_pretty(&want).unwrap()).unwrap();
            let text = judge(&py, &path, &exp_path);
            assert!(text.contains(&format!("architecture {model_type}")), "{text}");
        }
    }
}
