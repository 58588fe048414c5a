//! A decoder-only transformer of the Llama / Qwen2 family, written for
//! training: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU.
//!
//! candle-transformers' Llama and Qwen2 return last-position logits only and
//! use fused ops with no gradient, so they cannot be trained with teacher
//! forcing. Every op here carries a gradient (checked against finite
//! differences in `tests/gradients.rs`). Tensor names are Hugging Face's, so a
//! `model.safetensors` written here loads in `transformers` and the other way.

use std::collections::BTreeMap;

use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{D, DType, Device, Module, Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::params::{Dropout, ParamStore};

/// The model's shape, read from and written to an HF `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// `llama` (SmolLM2) or `qwen2` (Qwen2.5: biases on q, k and v).
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Dropout on the residual branches and attention weights while training.
    /// Llama and Qwen2 ship with 0; the trainer can switch it on at a step.
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub architectures: Vec<String>,
}

fn default_max_pos() -> usize {
    2048
}
fn default_eps() -> f64 {
    1e-5
}
fn default_theta() -> f64 {
    10000.0
}

impl Config {
    /// A small Llama-shaped student for from-scratch training.
    pub fn tiny(vocab_size: usize, hidden: usize, layers: usize, heads: usize, kv_heads: usize) -> Config {
        Config {
            model_type: "llama".into(),
            vocab_size,
            hidden_size: hidden,
            intermediate_size: hidden * 8 / 3 / 8 * 8,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            max_position_embeddings: 1024,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            tie_word_embeddings: true,
            attention_dropout: 0.0,
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
            architectures: vec!["LlamaForCausalLM".into()],
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    fn has_qkv_bias(&self) -> bool {
        self.model_type == "qwen2"
    }

    /// Checks the shape is buildable, naming the field that is not.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.num_attention_heads == 0 || self.hidden_size % self.num_attention_heads != 0 {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.num_key_value_heads == 0 || self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim() % 2 != 0 {
            return Err(format!(
                "head_dim {} must be even for rotary embeddings",
                self.head_dim()
            ));
        }
        if !matches!(self.model_type.as_str(), "llama" | "qwen2") {
            return Err(format!(
                "model_type {:?}: expected \"llama\" or \"qwen2\"",
                self.model_type
            ));
        }
        Ok(())
    }

    /// Every parameter's HF name and shape; `init` and loaders use this list.
    pub fn parameter_shapes(&self) -> BTreeMap<String, Vec<usize>> {
        let (h, i, hd) = (self.hidden_size, self.intermediate_size, self.head_dim());
        let (q, kv) = (self.num_attention_heads * hd, self.num_key_value_heads * hd);
        let mut m = BTreeMap::new();
        m.insert("model.embed_tokens.weight".into(), vec![self.vocab_size, h]);
        m.insert("model.norm.weight".into(), vec![h]);
        if !self.tie_word_embeddings {
            m.insert("lm_head.weight".into(), vec![self.vocab_size, h]);
        }
        for l in 0..self.num_hidden_layers {
            let p = format!("model.layers.{l}");
            m.insert(format!("{p}.input_layernorm.weight"), vec![h]);
            m.insert(format!("{p}.post_attention_layernorm.weight"), vec![h]);
            m.insert(format!("{p}.self_attn.q_proj.weight"), vec![q, h]);
            m.insert(format!("{p}.self_attn.k_proj.weight"), vec![kv, h]);
            m.insert(format!("{p}.self_attn.v_proj.weight"), vec![kv, h]);
            m.insert(format!("{p}.self_attn.o_proj.weight"), vec![h, q]);
            if self.has_qkv_bias() {
                m.insert(format!("{p}.self_attn.q_proj.bias"), vec![q]);
                m.insert(format!("{p}.self_attn.k_proj.bias"), vec![kv]);
                m.insert(format!("{p}.self_attn.v_proj.bias"), vec![kv]);
            }
            m.insert(format!("{p}.mlp.gate_proj.weight"), vec![i, h]);
            m.insert(format!("{p}.mlp.up_proj.weight"), vec![i, h]);
            m.insert(format!("{p}.mlp.down_proj.weight"), vec![h, i]);
        }
        m
    }

    /// Number of parameters (tied embeddings counted once).
    pub fn num_parameters(&self) -> usize {
        self.parameter_shapes()
            .values()
            .map(|s| s.iter().product::<usize>())
            .sum()
    }
}

/// `x @ w^T (+ b)` as one 2-D matmul over flattened batch and time (about 2×
/// faster than the broadcast form on CPU).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let w = w.to_dtype(x.dtype())?;
    over_rows(x, b, |rows| rows.matmul(&w.t()?))
}

/// `f` applied to `x` flattened to `(rows, last)`, `b` added to every row,
/// and the leading dimensions restored.
fn over_rows(x: &Tensor, b: Option<&Tensor>, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let (last, rest) = dims.split_last().expect("a projection's input has a last dim");
    let y = f(&x.reshape((rest.iter().product::<usize>(), *last))?)?;
    let y = match b {
        Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?)?,
        None => y,
    };
    let mut out = rest.to_vec();
    out.push(y.dim(1)?);
    y.reshape(out)
}

/// Half precision widened to f32 for reductions and outputs; f32/f64 kept.
pub(crate) fn widened(dtype: DType) -> DType {
    match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    }
}

pub use crate::ops::{rms_norm, rope};

/// Per-layer keys and values of the tokens seen so far, for generation.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn new(layers: usize) -> KvCache {
        KvCache {
            layers: vec![None; layers],
        }
    }
    /// Tokens cached so far.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map(|(k, _)| k.dim(2).unwrap_or(0))
            .unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Layer `l`'s cached keys and values with `k`, `v` (new tokens on dim 2)
    /// appended; the cache keeps the result.
    pub fn append(&mut self, l: usize, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let (k, v) = match &self.layers[l] {
            Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
            None => (k, v),
        };
        self.layers[l] = Some((k.detach(), v.detach()));
        Ok((k, v))
    }
}

/// The decoder. Holds the parameters' tensors (sharing storage with the
/// `ParamStore`'s variables, so optimizer updates are seen here), or for
/// inference only, block-quantized projections.
pub struct Llama {
    pub config: Config,
    p: BTreeMap<String, Tensor>,
    /// Projection matrices kept quantized (a GGUF teacher); empty when training.
    q: BTreeMap<String, QMatMul>,
    cos: Tensor,
    sin: Tensor,
}

impl Llama {
    pub fn new(config: &Config, params: &ParamStore) -> Result<Llama> {
        config.validate().map_err(candle_core::Error::msg)?;
        let p = params.tensors_for(&config.parameter_shapes())?;
        Llama::from_parts(config, p, BTreeMap::new(), params.device())
    }

    /// An inference-only model whose projections in `weights.quantized`
    /// multiply without being dequantised (no gradients flow through them).
    pub fn for_inference(config: &Config, weights: crate::gguf::InferenceWeights, dev: &Device) -> Result<Llama> {
        config.validate().map_err(candle_core::Error::msg)?;
        Llama::from_parts(config, weights.dense, weights.quantized, dev)
    }

    fn from_parts(
        config: &Config,
        p: BTreeMap<String, Tensor>,
        q: BTreeMap<String, QMatMul>,
        dev: &Device,
    ) -> Result<Llama> {
        let hd = config.head_dim();
        let inv: Vec<f32> = (0..hd / 2)
            .map(|i| 1.0 / config.rope_theta.powf(2.0 * i as f64 / hd as f64) as f32)
            .collect();
        let n = config.max_position_embeddings;
        let inv = Tensor::from_vec(inv, (1, hd / 2), dev)?;
        let pos = Tensor::arange(0u32, n as u32, dev)?
            .to_dtype(DType::F32)?
            .reshape((n, 1))?;
        let freqs = pos.matmul(&inv)?;
        let freqs = Tensor::cat(&[&freqs, &freqs], 1)?;
        Ok(Llama {
            config: config.clone(),
            p,
            q,
            cos: freqs.cos()?,
            sin: freqs.sin()?,
        })
    }

    pub fn device(&self) -> &Device {
        self.cos.device()
    }

    fn w(&self, name: &str) -> &Tensor {
        &self.p[name]
    }

    /// `x @ W^T (+ b)` for the projection `name` (`name.weight`, `name.bias`).
    fn project(&self, x: &Tensor, name: &str) -> Result<Tensor> {
        let bias = self.p.get(&format!("{name}.bias"));
        let weight = format!("{name}.weight");
        let Some(q) = self.q.get(&weight) else {
            return linear(x, self.w(&weight), bias);
        };
        let rows = x.elem_count() / x.dim(D::Minus1)?.max(1);
        if rows >= DEQUANTIZE_ROWS
            && let QMatMul::QTensor(w) = q
            && w.dtype() == GgmlDType::Q8_0
        {
            return linear(x, &w.dequantize(x.device())?, bias);
        }
        over_rows(x, bias, |rows| q.forward(&rows.contiguous()?))
    }

    /// Logits for every position: `ids` `(b, t)` u32, `positions` `(b, t)` u32
    /// (0-based, each row's own; padding may take any position), `mask`
    /// `(b, 1, t, t_total)` additive (0 or a large negative) covering the cached
    /// tokens too. `dropout` is `Some` only while training.
    pub fn forward(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
        mut cache: Option<&mut KvCache>,
        dropout: Option<&mut Dropout>,
        dtype: DType,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let (b, t) = ids.dims2()?;
        let hd = cfg.head_dim();
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let mut dropout = dropout.filter(|d| d.p > 0.0);

        let flat_pos = positions.flatten_all()?;
        let cos = self
            .cos
            .index_select(&flat_pos, 0)?
            .reshape((b, 1, t, hd))?
            .to_dtype(dtype)?;
        let sin = self
            .sin
            .index_select(&flat_pos, 0)?
            .reshape((b, 1, t, hd))?
            .to_dtype(dtype)?;
        let mask = mask.to_dtype(dtype)?;

        let emb = self.w("model.embed_tokens.weight");
        let mut x = emb
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, cfg.hidden_size))?
            .to_dtype(dtype)?;
        let scale = 1.0 / (hd as f64).sqrt();
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let h = rms_norm(&x, self.w(&format!("{p}.input_layernorm.weight")), cfg.rms_norm_eps)?;
            let proj = |name: &str| self.project(&h, &format!("{p}.self_attn.{name}"));
            let q = proj("q_proj")?.reshape((b, t, nh, hd))?.transpose(1, 2)?;
            let k = proj("k_proj")?.reshape((b, t, nkv, hd))?.transpose(1, 2)?;
            let v = proj("v_proj")?
                .reshape((b, t, nkv, hd))?
                .transpose(1, 2)?
                .contiguous()?;
            let q = rope(&q.contiguous()?, &cos, &sin)?;
            let k = rope(&k.contiguous()?, &cos, &sin)?;
            let (k, v) = match cache.as_deref_mut() {
                Some(c) => c.append(l, k, v)?,
                None => (k, v),
            };
            let tk = k.dim(2)?;
            // Grouped-query attention: each kv head serves nh/nkv query heads.
            let g = nh / nkv;
            let q = q.reshape((b, nkv, g * t, hd))?;
            let att = (q.matmul(&k.t()?)? * scale)?.reshape((b, nkv, g, t, tk))?;
            let att = att.broadcast_add(&mask.unsqueeze(2)?)?;
            let att = crate::ops::softmax_last(&att)?;
            let att = match dropout.as_deref_mut() {
                Some(d) => d.apply(&att)?,
                None => att,
            };
            let y = att.reshape((b, nkv, g * t, tk))?.matmul(&v)?;
            let y = y.reshape((b, nh, t, hd))?.transpose(1, 2)?.reshape((b, t, nh * hd))?;
            let y = self.project(&y, &format!("{p}.self_attn.o_proj"))?;
            let y = match dropout.as_deref_mut() {
                Some(d) => d.apply(&y)?,
                None => y,
            };
            x = (x + y)?;

            let h = rms_norm(
                &x,
                self.w(&format!("{p}.post_attention_layernorm.weight")),
                cfg.rms_norm_eps,
            )?;
            let gate = self.project(&h, &format!("{p}.mlp.gate_proj"))?;
            let up = self.project(&h, &format!("{p}.mlp.up_proj"))?;
            let y = self.project(&crate::ops::swiglu(&gate, &up)?, &format!("{p}.mlp.down_proj"))?;
            let y = match dropout.as_deref_mut() {
                Some(d) => d.apply(&y)?,
                None => y,
            };
            x = (x + y)?;
        }
        let x = rms_norm(&x, self.w("model.norm.weight"), cfg.rms_norm_eps)?;
        let logits = if self.q.contains_key("lm_head.weight") || self.p.contains_key("lm_head.weight") {
            self.project(&x, "lm_head")?
        } else {
            linear(&x, emb, None)?
        };
        logits.to_dtype(widened(dtype))
    }

    /// Teacher-forced logits for right-padded sequences: causal attention,
    /// padding keys masked, positions 0..t.
    pub fn forward_train(
        &self,
        ids: &Tensor,
        lengths: &[usize],
        dropout: Option<&mut Dropout>,
        dtype: DType,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let dev = ids.device();
        let positions = Tensor::arange(0u32, t as u32, dev)?
            .unsqueeze(0)?
            .broadcast_as((b, t))?
            .contiguous()?;
        let mask = causal_mask(lengths, t, dev)?;
        self.forward(ids, &positions, &mask, None, dropout, dtype)
    }
}

/// From this many rows (a prompt's prefill) a Q8_0 projection is dequantised
/// and multiplied as f32: a GEMM over many rows beats candle's row-by-row
/// Q8_0 dot products (3x on a 584-token prefill of Qwen2.5-0.5B), and
/// dequantising Q8_0 is cheap. K-quants have candle's repacked GEMM instead.
const DEQUANTIZE_ROWS: usize = 64;

/// Large negative, finite so a fully masked row gives a uniform softmax
/// rather than NaN.
pub const MASKED: f32 = -1e9;

/// `(b, 1, t, t)` additive causal mask for right-padded rows of `lengths`.
pub fn causal_mask(lengths: &[usize], t: usize, dev: &Device) -> Result<Tensor> {
    let b = lengths.len();
    let mut m = vec![0f32; b * t * t];
    for (r, &len) in lengths.iter().enumerate() {
        for i in 0..t {
            for j in 0..t {
                if j > i || j >= len {
                    m[r * t * t + i * t + j] = MASKED;
                }
            }
        }
    }
    Tensor::from_vec(m, (b, 1, t, t), dev)
}

/// `(b, 1, t, cached + t)` additive mask for left-padded rows decoding `t` new
/// tokens after `cached` ones: row `r`'s first `pads[r]` keys are padding;
/// new tokens see every earlier key and themselves.
pub fn left_padded_mask(pads: &[usize], t: usize, cached: usize, dev: &Device) -> Result<Tensor> {
    let b = pads.len();
    let tk = cached + t;
    let mut m = vec![0f32; b * t * tk];
    for (r, &pad) in pads.iter().enumerate() {
        for i in 0..t {
            for j in 0..tk {
                if j > cached + i || j < pad {
                    m[(r * t + i) * tk + j] = MASKED;
                }
            }
        }
    }
    Tensor::from_vec(m, (b, 1, t, tk), dev)
}
