//! A trained decoder student written as one GGUF file that llama.cpp and
//! Ollama serve: f16, q8_0, or llama.cpp's q4_k_m mix.
//!
//! The layout is what llama.cpp's `convert_hf_to_gguf.py` writes for a
//! `LlamaForCausalLM` / `Qwen2ForCausalLM` (and `llama-quantize` for
//! q4_k_m), and the exact inverse of [`crate::gguf`]'s reader, so
//! [`crate::Student::from_gguf`] gives the same model back:
//!
//! - metadata: `general.*`, the `{arch}.*` hyperparameters, and the
//!   tokenizer as `tokenizer.ggml.*` (model `gpt2`, the `pre` name llama.cpp
//!   selects the same pre-tokenizer by, tokens, token types, merges, special
//!   ids, `add_bos_token` false: students are trained without a BOS) with
//!   `tokenizer.chat_template` when the student has one;
//! - tensors under llama.cpp's names, `token_embd`, the blocks in order,
//!   `output_norm`, then `output` (absent when the embeddings are tied).
//!   The q/k rows of `llama` models are permuted for llama.cpp's
//!   interleaved rotary embeddings (as the converter does; `qwen2` is not).
//!   Norm weights, biases and every 1-D tensor stay f32.
//!
//! Quantised types need a row length (the last HF dimension, ggml's `ne[0]`)
//! that is a multiple of their block: 32 for q8_0, 256 for the k-quants. A
//! matrix whose rows are not falls back, per tensor, to q8_0 when they are a
//! multiple of 32 and to f16 otherwise (llama.cpp falls back from q4_K to
//! q5_0 instead; q8_0 is more accurate and has a SIMD kernel in candle).
//!
//! The file is written with [`stepwise_datasets::atomic::write_file_with`]:
//! a reader never sees half of one.

use std::collections::BTreeMap;
use std::fmt;
use std::io::BufWriter;
use std::path::Path;
use std::str::FromStr;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device};

use crate::error::{Result, StudentError};
use crate::gguf::permute_rows;
use crate::llama::Config;
use crate::student::{ModelConfig, Student};

/// Qwen2's pre-tokenizer regex, as its `tokenizer.json`, llama.cpp and
/// [`crate::gguf`] have it.
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's `tokenizer.ggml.token_type` values.
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;
const TOKEN_UNUSED: i32 = 5;

/// ggml's quantisation version (`GGML_QNT_VERSION`), which llama.cpp's
/// converter writes into every file.
const QUANTIZATION_VERSION: u32 = 2;

/// What the weights are stored as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgufType {
    /// Every matrix f16 (`MOSTLY_F16`).
    F16,
    /// Every matrix q8_0 (`MOSTLY_Q8_0`).
    Q8_0,
    /// llama.cpp's q4_k_m mix (`MOSTLY_Q4_K_M`): q4_K, with q6_K for the
    /// output head (the embedding table when tied) and for `attn_v` and
    /// `ffn_down` in the layers llama.cpp's `use_more_bits` picks (the first
    /// and last eighth and every third in between).
    Q4KM,
}

impl GgufType {
    /// The name llama.cpp's tools use (`f16`, `q8_0`, `q4_k_m`).
    pub fn as_str(self) -> &'static str {
        match self {
            GgufType::F16 => "f16",
            GgufType::Q8_0 => "q8_0",
            GgufType::Q4KM => "q4_k_m",
        }
    }

    /// `general.file_type`: llama.cpp's `llama_ftype`.
    pub fn file_type(self) -> u32 {
        match self {
            GgufType::F16 => 1,
            GgufType::Q8_0 => 7,
            GgufType::Q4KM => 15,
        }
    }
}

impl fmt::Display for GgufType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for GgufType {
    type Err = StudentError;

    /// `f16`, `q8_0` or `q4_k_m`, in any case.
    fn from_str(s: &str) -> Result<GgufType> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Ok(GgufType::F16),
            "q8_0" => Ok(GgufType::Q8_0),
            "q4_k_m" => Ok(GgufType::Q4KM),
            _ => Err(StudentError::Config(format!(
                "GGUF type {s:?} is not supported (expected f16, q8_0 or q4_k_m)"
            ))),
        }
    }
}

/// What [`export_gguf`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    /// Tensors in the file.
    pub tensors: usize,
    /// The file's size in bytes.
    pub bytes: u64,
    /// Tensors per ggml type, by ggml's name (`f32`, `f16`, `q8_0`, `q4_K`, `q6_K`).
    pub by_type: BTreeMap<String, usize>,
}

/// ggml's name for a type (`ggml_type_name`).
pub fn ggml_type_name(t: GgmlDType) -> &'static str {
    match t {
        GgmlDType::F32 => "f32",
        GgmlDType::F16 => "f16",
        GgmlDType::BF16 => "bf16",
        GgmlDType::Q4_0 => "q4_0",
        GgmlDType::Q4_1 => "q4_1",
        GgmlDType::Q5_0 => "q5_0",
        GgmlDType::Q5_1 => "q5_1",
        GgmlDType::Q8_0 => "q8_0",
        GgmlDType::Q8_1 => "q8_1",
        GgmlDType::Q2K => "q2_K",
        GgmlDType::Q3K => "q3_K",
        GgmlDType::Q4K => "q4_K",
        GgmlDType::Q5K => "q5_K",
        GgmlDType::Q6K => "q6_K",
        GgmlDType::Q8K => "q8_K",
    }
}

/// Writes `student` to `path` as a GGUF file of type `ty`.
///
/// Only decoder students (`llama`, `qwen2`) without adapters: merge LoRA
/// adapters first with [`Student::merged`]. The tokenizer must be a
/// byte-level BPE whose pre-tokenizer llama.cpp has a name for (SmolLM's
/// digits + GPT-2, Qwen2's, or GPT-2's).
pub fn export_gguf(student: &Student, path: &Path, ty: GgufType) -> Result<ExportSummary> {
    let config = match &student.config {
        ModelConfig::Llama(c) => c,
        ModelConfig::T5(_) => {
            return Err(StudentError::Config(
                "GGUF export supports llama and qwen2 decoders; t5 (an encoder-decoder) has no \
                 llama.cpp architecture this exporter writes"
                    .into(),
            ));
        }
    };
    if !matches!(config.model_type.as_str(), "llama" | "qwen2") {
        return Err(StudentError::Config(format!(
            "GGUF export supports llama and qwen2 decoders, not model_type {:?}",
            config.model_type
        )));
    }
    if student.adapters.is_some() {
        return Err(StudentError::Config(
            "this student has LoRA adapters: merge them into the weights first with \
             Student::merged(), then export the merged student"
                .into(),
        ));
    }
    config.validate().map_err(StudentError::Config)?;

    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "stepwise student".into());
    let mut metadata = model_metadata(config, &name, ty);
    metadata.extend(tokenizer_metadata(student, config)?);

    let tensors = quantized_tensors(student, config, ty)?;
    let mut by_type = BTreeMap::new();
    for (_, q) in &tensors {
        *by_type.entry(ggml_type_name(q.dtype()).to_string()).or_insert(0) += 1;
    }

    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, q)| (k.as_str(), q)).collect();
    stepwise_datasets::atomic::write_file_with(path, |file| {
        let mut w = BufWriter::new(file);
        gguf_file::write(&mut w, &md, &ts).map_err(|e| std::io::Error::other(e.to_string()))?;
        w.into_inner().map_err(|e| e.into_error())
    })?;
    let bytes = std::fs::metadata(path).map_err(crate::error::io(path))?.len();
    Ok(ExportSummary {
        tensors: tensors.len(),
        bytes,
        by_type,
    })
}

/// `general.*` and the `{arch}.*` hyperparameters, in the converter's order.
fn model_metadata(config: &Config, name: &str, ty: GgufType) -> Vec<(String, Value)> {
    let arch = config.model_type.as_str();
    let k = |s: &str| format!("{arch}.{s}");
    let u = |x: usize| Value::U32(x as u32);
    vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.type".into(), Value::String("model".into())),
        ("general.name".into(), Value::String(name.into())),
        (k("block_count"), u(config.num_hidden_layers)),
        (k("context_length"), u(config.max_position_embeddings)),
        (k("embedding_length"), u(config.hidden_size)),
        (k("feed_forward_length"), u(config.intermediate_size)),
        (k("attention.head_count"), u(config.num_attention_heads)),
        (k("attention.head_count_kv"), u(config.num_key_value_heads)),
        (k("rope.freq_base"), Value::F32(config.rope_theta as f32)),
        (
            k("attention.layer_norm_rms_epsilon"),
            Value::F32(config.rms_norm_eps as f32),
        ),
        ("general.file_type".into(), Value::U32(ty.file_type())),
        (k("vocab_size"), u(config.vocab_size)),
        (k("rope.dimension_count"), u(config.head_dim())),
        ("general.quantization_version".into(), Value::U32(QUANTIZATION_VERSION)),
    ]
}

/// The tokenizer as `tokenizer.ggml.*` (what [`crate::gguf::GgufFile::tokenizer`]
/// rebuilds it from), padded to the embedding table's rows as the converter
/// pads (`[PAD{id}]`, unused).
fn tokenizer_metadata(student: &Student, config: &Config) -> Result<Vec<(String, Value)>> {
    let tok = &student.tokenizer;
    let bad = |m: String| StudentError::Tokenizer(format!("GGUF export: {m}"));
    let json = tok
        .inner
        .to_string(false)
        .map_err(|e| bad(format!("serialising the tokenizer: {e}")))?;
    let json: serde_json::Value = serde_json::from_str(&json).map_err(|e| bad(e.to_string()))?;

    let model = &json["model"];
    if model["type"] != "BPE" {
        return Err(bad(format!(
            "only byte-level BPE tokenizers can be written (model type {})",
            model["type"]
        )));
    }
    for (field, ok) in [
        ("byte_fallback", model["byte_fallback"].as_bool() != Some(true)),
        ("ignore_merges", model["ignore_merges"].as_bool() != Some(true)),
        (
            "continuing_subword_prefix",
            model["continuing_subword_prefix"].is_null(),
        ),
        ("end_of_word_suffix", model["end_of_word_suffix"].is_null()),
        ("dropout", model["dropout"].is_null()),
    ] {
        if !ok {
            return Err(bad(format!(
                "the BPE model's {field} ({}) has no GGUF equivalent",
                model[field]
            )));
        }
    }
    match json["normalizer"]["type"].as_str() {
        // Qwen2 normalises to NFC; llama.cpp does not, and nor does the
        // reader: only text that is not already NFC tokenizes differently.
        None | Some("NFC") => {}
        Some(other) => return Err(bad(format!("the {other} normalizer has no GGUF equivalent"))),
    }
    let pre = pre_tokenizer_name(&json["pre_tokenizer"]).ok_or_else(|| {
        bad(format!(
            "pre-tokenizer {} is not one llama.cpp names (SmolLM's digits + GPT-2, Qwen2's, GPT-2's)",
            json["pre_tokenizer"]
        ))
    })?;

    let vocab = tok.inner.get_vocab(true);
    let n = config.vocab_size;
    if vocab.len() > n {
        return Err(bad(format!(
            "the tokenizer has {} tokens, the embedding table {n} rows",
            vocab.len()
        )));
    }
    let mut tokens: Vec<Option<String>> = vec![None; n];
    for (s, id) in vocab {
        let slot = tokens
            .get_mut(id as usize)
            .ok_or_else(|| bad(format!("token {s:?} has id {id}, past the embedding table's {n} rows")))?;
        *slot = Some(s);
    }
    let added = tok.inner.get_added_tokens_decoder();
    let mut types = Vec::with_capacity(n);
    let mut strings = Vec::with_capacity(n);
    for (id, t) in tokens.into_iter().enumerate() {
        let ty = match (&t, added.get(&(id as u32))) {
            (None, _) => TOKEN_UNUSED,
            (Some(_), Some(a)) if a.special => TOKEN_CONTROL,
            (Some(_), Some(_)) => TOKEN_USER_DEFINED,
            (Some(_), None) => TOKEN_NORMAL,
        };
        types.push(Value::I32(ty));
        strings.push(Value::String(t.unwrap_or_else(|| format!("[PAD{id}]"))));
    }
    let merges = merges(&model["merges"]).map_err(bad)?;

    let mut md: Vec<(String, Value)> = vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String(pre.into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(strings)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(merges.into_iter().map(Value::String).collect()),
        ),
    ];
    if let Some(bos) = config.bos_token_id {
        md.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(bos)));
    }
    md.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(tok.eos_id)));
    md.push(("tokenizer.ggml.padding_token_id".into(), Value::U32(tok.pad_id)));
    md.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)));
    if let Some(t) = &tok.chat_template {
        md.push(("tokenizer.chat_template".into(), Value::String(t.clone())));
    }
    Ok(md)
}

/// The `tokenizer.ggml.pre` name llama.cpp (and the reader) map back to this
/// `tokenizer.json` pre-tokenizer, if there is one.
fn pre_tokenizer_name(pre: &serde_json::Value) -> Option<&'static str> {
    let byte_level = |p: &serde_json::Value, regex: bool| {
        p["type"] == "ByteLevel" && p["add_prefix_space"] == false && p["use_regex"].as_bool() == Some(regex)
    };
    if byte_level(pre, true) {
        // llama.cpp's name for GPT-2's regex ("gpt2" is not one it knows).
        return Some("gpt-2");
    }
    if pre["type"] != "Sequence" {
        return None;
    }
    match pre["pretokenizers"].as_array()?.as_slice() {
        [d, b] if d["type"] == "Digits" && d["individual_digits"] == true && byte_level(b, true) => Some("smollm"),
        [s, b]
            if s["type"] == "Split"
                && s["pattern"]["Regex"] == QWEN2_SPLIT
                && s["behavior"] == "Isolated"
                && s["invert"] == false
                && byte_level(b, false) =>
        {
            Some("qwen2")
        }
        _ => None,
    }
}

/// The BPE merges as `"a b"`, in rank order; `tokenizer.json` writes them as
/// pairs (tokenizers >= 0.20) or as such strings.
fn merges(m: &serde_json::Value) -> std::result::Result<Vec<String>, String> {
    let list = m.as_array().ok_or("the BPE model has no merges")?;
    list.iter()
        .enumerate()
        .map(|(i, x)| {
            let (a, b) = match x {
                serde_json::Value::String(s) => s.split_once(' ').ok_or_else(|| format!("merge {i} {s:?}"))?,
                serde_json::Value::Array(p) => match p.as_slice() {
                    [serde_json::Value::String(a), serde_json::Value::String(b)] => (a.as_str(), b.as_str()),
                    _ => return Err(format!("merge {i} {x} is not a pair")),
                },
                _ => return Err(format!("merge {i} {x} is not a pair")),
            };
            if a.contains(' ') || b.contains(' ') {
                return Err(format!("merge {i} ({a:?}, {b:?}) has a space, which GGUF cannot split"));
            }
            Ok(format!("{a} {b}"))
        })
        .collect()
}

/// HF tensor name → llama.cpp's; the inverse of [`crate::gguf::hf_name`].
pub fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, name) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let g = match name {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}"))
}

/// The HF names in the order the file holds them: the embeddings, each
/// block (attention, then feed-forward), the final norm, the output head.
fn tensor_order(config: &Config) -> Vec<String> {
    let shapes = config.parameter_shapes();
    let mut order = vec!["model.embed_tokens.weight".to_string()];
    for l in 0..config.num_hidden_layers {
        for s in [
            "input_layernorm.weight",
            "self_attn.q_proj.weight",
            "self_attn.q_proj.bias",
            "self_attn.k_proj.weight",
            "self_attn.k_proj.bias",
            "self_attn.v_proj.weight",
            "self_attn.v_proj.bias",
            "self_attn.o_proj.weight",
            "post_attention_layernorm.weight",
            "mlp.gate_proj.weight",
            "mlp.up_proj.weight",
            "mlp.down_proj.weight",
        ] {
            order.push(format!("model.layers.{l}.{s}"));
        }
    }
    order.push("model.norm.weight".into());
    order.push("lm_head.weight".into());
    order.retain(|n| shapes.contains_key(n));
    order
}

/// Every parameter under its GGUF name, permuted and quantised.
fn quantized_tensors(student: &Student, config: &Config, ty: GgufType) -> Result<Vec<(String, QTensor)>> {
    let order = tensor_order(config);
    let expected = config.parameter_shapes();
    if order.len() != expected.len() {
        let missing: Vec<_> = expected.keys().filter(|k| !order.contains(k)).collect();
        return Err(StudentError::Config(format!(
            "GGUF export: no GGUF name for {missing:?}"
        )));
    }
    let tied = config.tie_word_embeddings;
    let mut out = Vec::with_capacity(order.len());
    for hf in &order {
        let name = gguf_name(hf).ok_or_else(|| StudentError::Config(format!("GGUF export: no GGUF name for {hf}")))?;
        let mut t = student.params.get(hf)?.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        if t.dims() != expected[hf].as_slice() {
            return Err(StudentError::Config(format!(
                "GGUF export: {hf} has shape {:?}, the config says {:?}",
                t.dims(),
                expected[hf]
            )));
        }
        if config.model_type == "llama" {
            if hf.ends_with("self_attn.q_proj.weight") {
                t = permute_rows(&t, config.num_attention_heads, config.head_dim())?;
            } else if hf.ends_with("self_attn.k_proj.weight") {
                t = permute_rows(&t, config.num_key_value_heads, config.head_dim())?;
            }
        }
        let dtype = tensor_type(ty, &name, t.dims(), config.num_hidden_layers, tied);
        let q = QTensor::quantize(&t, dtype)?;
        out.push((name, q));
    }
    Ok(out)
}

/// llama.cpp's `use_more_bits`: the layers whose `attn_v` / `ffn_down` get
/// q6_K in q4_k_m (the first and last eighth, and every third in between).
fn use_more_bits(layer: usize, layers: usize) -> bool {
    let (i, n) = (layer as i64, layers as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// The ggml type of tensor `name` (GGUF name) of HF shape `dims`.
fn tensor_type(ty: GgufType, name: &str, dims: &[usize], layers: usize, tied: bool) -> GgmlDType {
    if dims.len() < 2 || name.ends_with("_norm.weight") || !name.ends_with(".weight") {
        return GgmlDType::F32;
    }
    let layer = name
        .strip_prefix("blk.")
        .and_then(|r| r.split_once('.'))
        .and_then(|(l, _)| l.parse::<usize>().ok());
    let wanted = match ty {
        GgufType::F16 => return GgmlDType::F16,
        GgufType::Q8_0 => GgmlDType::Q8_0,
        GgufType::Q4KM => {
            let head = name == "output.weight" || (tied && name == "token_embd.weight");
            let more_bits = |suffix: &str| name.ends_with(suffix) && layer.is_some_and(|l| use_more_bits(l, layers));
            if head || more_bits(".attn_v.weight") || more_bits(".ffn_down.weight") {
                GgmlDType::Q6K
            } else {
                GgmlDType::Q4K
            }
        }
    };
    let row = *dims.last().expect("2-D");
    if row % wanted.block_size() == 0 {
        wanted
    } else if wanted != GgmlDType::Q8_0 && row % GgmlDType::Q8_0.block_size() == 0 {
        GgmlDType::Q8_0
    } else {
        GgmlDType::F16
    }
}
