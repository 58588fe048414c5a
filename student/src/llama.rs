//! A decoder-only transformer of the Llama / Qwen2 family, written for
//! training: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU.
//!
//! candle-transformers' Llama and Qwen2 return last-position logits only and
//! use fused ops with no gradient, so they cannot be trained with teacher
//! forcing. Every op here carries a gradient (checked against finite
//! differences in `tests/gradients.rs`). Tensor names are Hugging Face's, so a
//! `model.safetensors` written here loads in `transformers` and the other way.

use std::collections::BTreeMap;

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::layers::{Dropout, take, widened};
pub use crate::layers::{KvCache, Linear, MASKED, causal_mask, gapped_mask, left_padded_mask, linear};
use crate::params::ParamStore;

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

pub use crate::ops::{rms_norm, rope};

/// Self-attention's four projections (grouped-query: `k`, `v` have fewer heads).
pub struct Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
}

/// The SwiGLU feed-forward block.
pub struct Mlp {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

/// One decoder layer: pre-norm attention, then pre-norm MLP, each residual.
pub struct Block {
    pub input_norm: Tensor,
    pub attn: Attention,
    pub post_attention_norm: Tensor,
    pub mlp: Mlp,
}

/// The decoder. Its tensors share storage with the `ParamStore`'s variables
/// (so optimizer updates are seen here), or for inference only, its
/// projections are block-quantized.
pub struct Llama {
    pub config: Config,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    /// `None`: tied to the embedding table.
    lm_head: Option<Linear>,
    cos: Tensor,
    sin: Tensor,
}

impl Llama {
    pub fn new(config: &Config, params: &ParamStore) -> Result<Llama> {
        config.validate().map_err(candle_core::Error::msg)?;
        let p = params.tensors_for(&config.parameter_shapes())?;
        Llama::from_parts(config, p, BTreeMap::new(), params.device())
    }

    /// The model over a frozen `base` (detached: no gradient is formed for
    /// it) with `adapters` on their projections.
    pub fn with_adapters(config: &Config, base: &ParamStore, adapters: &crate::lora::Adapters) -> Result<Llama> {
        config.validate().map_err(candle_core::Error::msg)?;
        let p = base.frozen_tensors_for(&config.parameter_shapes())?;
        let mut m = Llama::from_parts(config, p, BTreeMap::new(), base.device())?;
        adapters
            .attach(m.linears_mut())
            .map_err(|e| candle_core::Error::msg(e.to_string()))?;
        Ok(m)
    }

    /// Every projection of the blocks (not the output head).
    pub fn linears_mut(&mut self) -> impl Iterator<Item = &mut Linear> {
        self.blocks.iter_mut().flat_map(|b| {
            let (a, m) = (&mut b.attn, &mut b.mlp);
            [
                &mut a.q,
                &mut a.k,
                &mut a.v,
                &mut a.o,
                &mut m.gate,
                &mut m.up,
                &mut m.down,
            ]
        })
    }

    /// An inference-only model whose projections in `weights.quantized`
    /// multiply without being dequantised (no gradients flow through them).
    pub fn for_inference(config: &Config, weights: crate::gguf::InferenceWeights, dev: &Device) -> Result<Llama> {
        config.validate().map_err(candle_core::Error::msg)?;
        Llama::from_parts(config, weights.dense, weights.quantized, dev)
    }

    /// The typed blocks from tensors named as Hugging Face names them.
    fn from_parts(
        config: &Config,
        mut p: BTreeMap<String, Tensor>,
        mut q: BTreeMap<String, QMatMul>,
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
        let mut blocks = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let b = format!("model.layers.{l}");
            let (p, q) = (&mut p, &mut q);
            blocks.push(Block {
                input_norm: take(p, &format!("{b}.input_layernorm.weight"))?,
                attn: Attention {
                    q: Linear::take(&format!("{b}.self_attn.q_proj"), p, q)?,
                    k: Linear::take(&format!("{b}.self_attn.k_proj"), p, q)?,
                    v: Linear::take(&format!("{b}.self_attn.v_proj"), p, q)?,
                    o: Linear::take(&format!("{b}.self_attn.o_proj"), p, q)?,
                },
                post_attention_norm: take(p, &format!("{b}.post_attention_layernorm.weight"))?,
                mlp: Mlp {
                    gate: Linear::take(&format!("{b}.mlp.gate_proj"), p, q)?,
                    up: Linear::take(&format!("{b}.mlp.up_proj"), p, q)?,
                    down: Linear::take(&format!("{b}.mlp.down_proj"), p, q)?,
                },
            });
        }
        let lm_head = if q.contains_key("lm_head.weight") || p.contains_key("lm_head.weight") {
            Some(Linear::take("lm_head", &mut p, &mut q)?)
        } else {
            None
        };
        Ok(Llama {
            config: config.clone(),
            embed: take(&mut p, "model.embed_tokens.weight")?,
            norm: take(&mut p, "model.norm.weight")?,
            blocks,
            lm_head,
            cos: freqs.cos()?,
            sin: freqs.sin()?,
        })
    }

    pub fn device(&self) -> &Device {
        self.cos.device()
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
        cache: Option<&mut KvCache>,
        dropout: Option<&mut Dropout>,
        dtype: DType,
    ) -> Result<Tensor> {
        let x = self.hidden(ids, positions, mask, cache, dropout, dtype)?;
        self.head(&x, dtype)
    }

    /// [`Llama::forward`]'s logits at the last position only, `(b, 1, vocab)`:
    /// a prefill needs no others, and the head is the widest matmul of a
    /// large-vocabulary model.
    pub fn forward_last(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
        cache: Option<&mut KvCache>,
        dtype: DType,
    ) -> Result<Tensor> {
        let x = self.hidden(ids, positions, mask, cache, None, dtype)?;
        let t = x.dim(1)?;
        self.head(&x.narrow(1, t - 1, 1)?, dtype)
    }

    fn head(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        let logits = match &self.lm_head {
            Some(head) => head.forward(x)?,
            None => linear(x, &self.embed, None)?,
        };
        logits.to_dtype(widened(dtype))
    }

    /// The final-normed hidden states, `(b, t, hidden)`.
    fn hidden(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
        mut cache: Option<&mut KvCache>,
        mut dropout: Option<&mut Dropout>,
        dtype: DType,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let (b, t) = ids.dims2()?;
        let hd = cfg.head_dim();
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        // Residual and attention dropout at the generator's rate; adapters
        // draw from it at their own.

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

        let mut x = self
            .embed
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, cfg.hidden_size))?
            .to_dtype(dtype)?;
        let scale = 1.0 / (hd as f64).sqrt();
        for (l, blk) in self.blocks.iter().enumerate() {
            let h = rms_norm(&x, &blk.input_norm, cfg.rms_norm_eps)?;
            let a = &blk.attn;
            let q =
                a.q.forward_with(&h, dropout.as_deref_mut())?
                    .reshape((b, t, nh, hd))?
                    .transpose(1, 2)?;
            let k =
                a.k.forward_with(&h, dropout.as_deref_mut())?
                    .reshape((b, t, nkv, hd))?
                    .transpose(1, 2)?;
            let v =
                a.v.forward_with(&h, dropout.as_deref_mut())?
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
                Some(d) if d.p > 0.0 => d.apply(&att)?,
                _ => att,
            };
            let y = att.reshape((b, nkv, g * t, tk))?.matmul(&v)?;
            let y = y.reshape((b, nh, t, hd))?.transpose(1, 2)?.reshape((b, t, nh * hd))?;
            let y = a.o.forward_with(&y, dropout.as_deref_mut())?;
            let y = match dropout.as_deref_mut() {
                Some(d) if d.p > 0.0 => d.apply(&y)?,
                _ => y,
            };
            x = (x + y)?;

            let h = rms_norm(&x, &blk.post_attention_norm, cfg.rms_norm_eps)?;
            let m = &blk.mlp;
            let gate = m.gate.forward_with(&h, dropout.as_deref_mut())?;
            let up = m.up.forward_with(&h, dropout.as_deref_mut())?;
            let y = m
                .down
                .forward_with(&crate::ops::swiglu(&gate, &up)?, dropout.as_deref_mut())?;
            let y = match dropout.as_deref_mut() {
                Some(d) if d.p > 0.0 => d.apply(&y)?,
                _ => y,
            };
            x = (x + y)?;
        }
        rms_norm(&x, &self.norm, cfg.rms_norm_eps)
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
        let x = self.hidden_train(ids, lengths, dropout, dtype)?;
        self.head(&x, dtype)
    }

    /// [`Llama::forward_train`]'s logits at the flat positions `at` (u32
    /// indices into `b * t`) only, `(at.len(), vocab)`: the loss needs no
    /// others, and the head is the widest matmul of a large-vocabulary model.
    pub fn forward_train_at(
        &self,
        ids: &Tensor,
        lengths: &[usize],
        at: &Tensor,
        dropout: Option<&mut Dropout>,
        dtype: DType,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let x = self.hidden_train(ids, lengths, dropout, dtype)?;
        let x = x.reshape((b * t, self.config.hidden_size))?.index_select(at, 0)?;
        self.head(&x, dtype)
    }

    /// [`Llama::hidden`] for right-padded sequences at positions 0..t.
    fn hidden_train(
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
        self.hidden(ids, &positions, &mask, None, dropout, dtype)
    }
}
