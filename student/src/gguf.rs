//! Pretrained students and teachers from a GGUF file (what registry packages
//! ship: SmolLM2, Qwen2.5), dequantised to f32 into the trainable [`Llama`],
//! or for inference (the gguf teacher) with the projections kept quantized.
//!
//! A GGUF holds no `tokenizer.json`: the tokenizer is rebuilt from the file's
//! own metadata (`tokenizer.ggml.tokens`, `merges`, `token_type`, `pre`) with
//! the pre-tokenizer llama.cpp selects for that `pre` name, and the chat
//! template is kept beside it. llama.cpp's converter stores the q/k rows of
//! `llama` models permuted for interleaved rotary embeddings; they are put
//! back in Hugging Face's half-split order here (`qwen2` files are not
//! permuted).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{Device, Tensor};
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::{Result, StudentError};
use crate::llama::{Config, Llama};
use crate::params::ParamStore;
use crate::tokenizer::StudentTokenizer;

/// Qwen2's pre-tokenizer regex, as its `tokenizer.json` and llama.cpp have it.
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// An opened GGUF file: its metadata and tensor index (tensors are read on demand).
pub struct GgufFile {
    pub path: PathBuf,
    pub content: Content,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile> {
        let mut r = reader(path)?;
        let content = Content::read(&mut r).map_err(|e| fmt_err(path, e))?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            content,
        })
    }

    fn err(&self, msg: impl std::fmt::Display) -> StudentError {
        fmt_err(&self.path, msg)
    }

    fn meta(&self, key: &str) -> Result<&Value> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| self.err(format!("metadata key {key} is missing")))
    }

    fn meta_u32(&self, key: &str) -> Result<u32> {
        let v = self.meta(key)?;
        v.to_u32()
            .or_else(|_| v.to_u64().map(|x| x as u32))
            .or_else(|_| v.to_i32().map(|x| x as u32))
            .map_err(|e| self.err(format!("{key}: {e}")))
    }

    fn meta_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.content.metadata.get(key) {
            None => Ok(None),
            Some(v) => v
                .to_f32()
                .map(|x| Some(x as f64))
                .or_else(|_| v.to_f64().map(Some))
                .map_err(|e| self.err(format!("{key}: {e}"))),
        }
    }

    fn meta_str(&self, key: &str) -> Option<&str> {
        self.content
            .metadata
            .get(key)
            .and_then(|v| v.to_string().ok())
            .map(|s| s.as_str())
    }

    fn meta_strings(&self, key: &str) -> Result<Vec<String>> {
        let v = self.meta(key)?.to_vec().map_err(|e| self.err(format!("{key}: {e}")))?;
        v.iter()
            .map(|x| x.to_string().cloned().map_err(|e| self.err(format!("{key}: {e}"))))
            .collect()
    }

    /// `general.architecture`: `llama` or `qwen2`.
    pub fn architecture(&self) -> Result<String> {
        let arch = self
            .meta_str("general.architecture")
            .ok_or_else(|| self.err("metadata key general.architecture is missing"))?;
        match arch {
            "llama" | "qwen2" => Ok(arch.to_string()),
            other => Err(self.err(format!(
                "architecture {other:?} is not supported (expected llama or qwen2)"
            ))),
        }
    }

    /// The model's shape in HF `config.json` terms.
    pub fn config(&self) -> Result<Config> {
        let arch = self.architecture()?;
        let k = |s: &str| format!("{arch}.{s}");
        let tokens = self
            .meta("tokenizer.ggml.tokens")?
            .to_vec()
            .map(|v| v.len())
            .unwrap_or(0);
        let vocab_size = match self.content.metadata.get(&k("vocab_size")) {
            Some(_) => self.meta_u32(&k("vocab_size"))? as usize,
            None => tokens,
        };
        let heads = self.meta_u32(&k("attention.head_count"))? as usize;
        let cfg = Config {
            model_type: arch.clone(),
            vocab_size,
            hidden_size: self.meta_u32(&k("embedding_length"))? as usize,
            intermediate_size: self.meta_u32(&k("feed_forward_length"))? as usize,
            num_hidden_layers: self.meta_u32(&k("block_count"))? as usize,
            num_attention_heads: heads,
            num_key_value_heads: match self.content.metadata.get(&k("attention.head_count_kv")) {
                Some(_) => self.meta_u32(&k("attention.head_count_kv"))? as usize,
                None => heads,
            },
            max_position_embeddings: self.meta_u32(&k("context_length"))? as usize,
            rms_norm_eps: self.meta_f64(&k("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-6),
            rope_theta: self.meta_f64(&k("rope.freq_base"))?.unwrap_or(10000.0),
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            attention_dropout: 0.0,
            bos_token_id: self.meta_u32("tokenizer.ggml.bos_token_id").ok(),
            eos_token_id: self.meta_u32("tokenizer.ggml.eos_token_id").ok(),
            pad_token_id: self.meta_u32("tokenizer.ggml.padding_token_id").ok(),
            architectures: vec![if arch == "qwen2" {
                "Qwen2ForCausalLM".into()
            } else {
                "LlamaForCausalLM".into()
            }],
        };
        cfg.validate().map_err(|m| self.err(m))?;
        Ok(cfg)
    }

    /// Reads each tensor the model uses and hands it to `visit` with its
    /// GGUF name, its HF name and, for the q/k projections of `llama` files,
    /// the head count to unpermute its rows by. Shapes are checked against
    /// `config`; a tensor the model lacks, or one it needs that the file
    /// lacks, is an error.
    fn for_each_tensor(
        &self,
        config: &Config,
        device: &Device,
        mut visit: impl FnMut(&str, String, QTensor, Option<usize>) -> Result<()>,
    ) -> Result<()> {
        let mut r = reader(&self.path)?;
        let expected = config.parameter_shapes();
        let mut seen = BTreeSet::new();
        for gguf_name in self.content.tensor_infos.keys() {
            let Some(hf) = hf_name(gguf_name) else {
                tracing::debug!(tensor = %gguf_name, "GGUF tensor not used by the model");
                continue;
            };
            let q = self
                .content
                .tensor(&mut r, gguf_name, device)
                .map_err(|e| self.err(format!("tensor {gguf_name}: {e}")))?;
            match expected.get(&hf) {
                Some(shape) if q.shape().dims() == shape.as_slice() => {}
                Some(shape) => {
                    return Err(self.err(format!(
                        "tensor {gguf_name} ({hf}): shape {:?}, the metadata implies {shape:?}",
                        q.shape().dims()
                    )));
                }
                None => return Err(self.err(format!("tensor {gguf_name} ({hf}) is not part of the model"))),
            }
            let heads = match config.model_type.as_str() {
                "llama" if hf.ends_with("q_proj.weight") => Some(config.num_attention_heads),
                "llama" if hf.ends_with("k_proj.weight") => Some(config.num_key_value_heads),
                _ => None,
            };
            seen.insert(hf.clone());
            visit(gguf_name, hf, q, heads)?;
        }
        if let Some(missing) = expected.keys().find(|n| !seen.contains(*n)) {
            return Err(self.err(format!("no tensor for {missing}")));
        }
        Ok(())
    }

    /// Every tensor dequantised to f32 under its HF name, q/k rows restored
    /// to HF order for `llama` files.
    pub fn params(&self, config: &Config, device: &Device) -> Result<ParamStore> {
        let mut tensors = BTreeMap::new();
        self.for_each_tensor(config, device, |gguf_name, hf, q, heads| {
            let mut t = q
                .dequantize(device)
                .map_err(|e| self.err(format!("tensor {gguf_name}: {e}")))?;
            if let Some(heads) = heads {
                t = unpermute_rows(&t, heads, config.head_dim())?;
            }
            tensors.insert(hf, t);
            Ok(())
        })?;
        Ok(ParamStore::from_tensors(tensors, device)?)
    }

    /// The weights for inference without dequantising the projections: the
    /// block-quantized matrices stay as they are in the file and multiply
    /// with candle's quantized kernels (a quarter to an eighth of f32's
    /// memory traffic, which is what bounds decoding on a CPU). Norms, biases
    /// and the embedding table are dequantised to f32; a tied output head
    /// multiplies with the quantized embedding.
    pub fn inference_weights(&self, config: &Config, device: &Device) -> Result<InferenceWeights> {
        let mut w = InferenceWeights::default();
        self.for_each_tensor(config, device, |gguf_name, hf, mut q, heads| {
            let tensor_err = |e: candle_core::Error| self.err(format!("tensor {gguf_name}: {e}"));
            if matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
                let mut t = q.dequantize(device).map_err(tensor_err)?;
                if let Some(heads) = heads {
                    t = unpermute_rows(&t, heads, config.head_dim())?;
                }
                w.dense.insert(hf, t);
                return Ok(());
            }
            if !has_simd_kernel(q.dtype()) {
                // Dequantised and requantised at 8 bits: within 1/254 of a
                // block's range of the stored values, and 2-3x faster here
                // than candle's scalar dot product for these block types.
                let t = q.dequantize(device).map_err(tensor_err)?;
                q = QTensor::quantize(&t, GgmlDType::Q8_0).map_err(tensor_err)?;
            }
            if let Some(heads) = heads {
                q = unpermute_quantized_rows(&q, heads, config.head_dim(), device).map_err(tensor_err)?;
            }
            if hf.ends_with("proj.weight") || hf == "lm_head.weight" {
                w.quantized.insert(hf, QMatMul::from_qtensor(q).map_err(tensor_err)?);
                return Ok(());
            }
            // The embedding table: rows are gathered in f32; a tied head
            // multiplies with the quantized table.
            w.dense.insert(hf.clone(), q.dequantize(device).map_err(tensor_err)?);
            if hf == "model.embed_tokens.weight" && config.tie_word_embeddings {
                w.quantized
                    .insert("lm_head.weight".into(), QMatMul::from_qtensor(q).map_err(tensor_err)?);
            }
            Ok(())
        })?;
        Ok(w)
    }

    /// The tokenizer rebuilt from the metadata, with the chat template.
    pub fn tokenizer(&self) -> Result<StudentTokenizer> {
        let model = self.meta_str("tokenizer.ggml.model").unwrap_or("");
        if model != "gpt2" {
            return Err(self.err(format!(
                "tokenizer.ggml.model {model:?}: only byte-level BPE (\"gpt2\") tokenizers are supported"
            )));
        }
        let tokens = self.meta_strings("tokenizer.ggml.tokens")?;
        let merges = self.meta_strings("tokenizer.ggml.merges")?;
        let types: Vec<i32> = match self.content.metadata.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|e| self.err(format!("tokenizer.ggml.token_type: {e}")))?
                .iter()
                .map(|x| x.to_i32().unwrap_or(1))
                .collect(),
            None => vec![1; tokens.len()],
        };
        let vocab: HashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let mut pairs = Vec::with_capacity(merges.len());
        for (i, m) in merges.iter().enumerate() {
            let (a, b) = m
                .split_once(' ')
                .ok_or_else(|| self.err(format!("tokenizer.ggml.merges[{i}] {m:?} is not two tokens")))?;
            pairs.push((a.to_string(), b.to_string()));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab.into_iter().collect::<tokenizers::models::bpe::Vocab>(), pairs)
            .build()
            .map_err(|e| self.err(format!("building the BPE model: {e}")))?;
        let mut tok = Tokenizer::new(bpe);
        let pre = self.meta_str("tokenizer.ggml.pre").unwrap_or("default");
        match pre {
            // llama.cpp's SMOLLM / STARCODER: digits one by one, then GPT-2's regex.
            "smollm" | "starcoder" | "refact" | "codeshell" => {
                tok.with_pre_tokenizer(Some(Sequence::new(vec![
                    Digits::new(true).into(),
                    ByteLevel::new(false, true, true).into(),
                ])));
            }
            "qwen2" | "stablelm2" => {
                let split = Split::new(
                    SplitPattern::Regex(QWEN2_SPLIT.into()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| self.err(format!("the qwen2 pre-tokenizer: {e}")))?;
                tok.with_pre_tokenizer(Some(Sequence::new(vec![
                    split.into(),
                    ByteLevel::new(false, false, false).into(),
                ])));
            }
            // llama.cpp names the GPT-2 regex "gpt-2"; older files say "gpt2".
            "gpt-2" | "gpt2" | "default" => {
                tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
            }
            other => {
                return Err(self.err(format!(
                    "tokenizer.ggml.pre {other:?} is not supported (smollm, qwen2, gpt-2)"
                )));
            }
        }
        tok.with_decoder(Some(ByteLevel::default()));
        // Control (3) and user-defined (4) tokens match as whole strings.
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == 3 || **t == 4)
            .map(|(s, t)| AddedToken::from(s.clone(), *t == 3))
            .collect();
        tok.add_special_tokens(&added);
        let mut st = StudentTokenizer::from_tokenizer(tok, &self.path.display().to_string())?;
        if let Ok(eos) = self.meta_u32("tokenizer.ggml.eos_token_id") {
            st.eos_id = eos;
            st.add_stop(eos);
        }
        if let Ok(pad) = self.meta_u32("tokenizer.ggml.padding_token_id") {
            st.pad_id = pad;
        }
        for name in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>"] {
            if let Some(id) = st.inner.token_to_id(name) {
                st.add_stop(id);
            }
        }
        st.chat_template = self.meta_str("tokenizer.chat_template").map(str::to_string);
        Ok(st)
    }
}

/// A GGUF chat model for inference (a teacher): quantized projections, the
/// tokenizer from the file's metadata.
pub fn load_for_inference(path: &Path, device: &Device) -> Result<(Llama, StudentTokenizer)> {
    let file = GgufFile::open(path)?;
    let config = file.config()?;
    let tokenizer = file.tokenizer()?;
    let weights = file.inference_weights(&config, device)?;
    Ok((Llama::for_inference(&config, weights, device)?, tokenizer))
}

/// What [`GgufFile::inference_weights`] returns, by HF name.
#[derive(Default)]
pub struct InferenceWeights {
    /// Norms, biases, the embedding table (and any matrix stored unquantized).
    pub dense: BTreeMap<String, Tensor>,
    /// Block-quantized projection matrices (and the output head).
    pub quantized: BTreeMap<String, QMatMul>,
}

fn fmt_err(path: &Path, msg: impl std::fmt::Display) -> StudentError {
    StudentError::Format {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    }
}

fn reader(path: &Path) -> Result<BufReader<File>> {
    let f = File::open(path).map_err(crate::error::io(path))?;
    Ok(BufReader::new(f))
}

/// GGUF tensor name → Hugging Face name; `None` for tensors the model does
/// not use (e.g. `rope_freqs`).
pub fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, name) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match name {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// Undoes llama.cpp's `permute`: within each head the rows were stored as
/// interleaved pairs `(j, j + hd/2)`; HF keeps the two halves apart.
pub fn unpermute_rows(w: &Tensor, heads: usize, head_dim: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    Ok(w.reshape((heads, head_dim / 2, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

/// Block types candle 0.11 multiplies with SIMD dot products on x86 and ARM;
/// the others (Q4_1, Q5_0, Q5_1) fall back to scalar code.
fn has_simd_kernel(dtype: GgmlDType) -> bool {
    matches!(
        dtype,
        GgmlDType::Q4_0
            | GgmlDType::Q8_0
            | GgmlDType::Q2K
            | GgmlDType::Q3K
            | GgmlDType::Q4K
            | GgmlDType::Q5K
            | GgmlDType::Q6K
            | GgmlDType::Q8K
    )
}

/// [`unpermute_rows`] on a block-quantized matrix: blocks run along a row,
/// so whole rows of bytes move and nothing is requantised.
fn unpermute_quantized_rows(
    q: &QTensor,
    heads: usize,
    head_dim: usize,
    device: &Device,
) -> candle_core::Result<QTensor> {
    let (rows, _) = q.shape().dims2()?;
    let data = q.data()?;
    let row_bytes = data.len() / rows;
    let mut out = vec![0u8; data.len()];
    let half = head_dim / 2;
    for h in 0..heads {
        for j in 0..half {
            for a in 0..2 {
                let from = h * head_dim + j * 2 + a;
                let to = h * head_dim + a * half + j;
                out[to * row_bytes..(to + 1) * row_bytes]
                    .copy_from_slice(&data[from * row_bytes..(from + 1) * row_bytes]);
            }
        }
    }
    QTensor::new(
        QStorage::from_data(std::borrow::Cow::Owned(out), device, q.dtype())?,
        q.shape().clone(),
    )
}

/// The inverse of [`unpermute_rows`] (what llama.cpp's converter applies).
pub fn permute_rows(w: &Tensor, heads: usize, head_dim: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    Ok(w.reshape((heads, 2, head_dim / 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}
