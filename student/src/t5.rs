//! An encoder-decoder of the T5 family (the paper's students), written for
//! training: every op carries a gradient, dropout is applied where Hugging
//! Face's T5 applies it, tensor names are HF's.
//!
//! Where candle-transformers' T5 differs from HF's, this follows HF (the
//! reference the paper's checkpoints come from): the tied output is scaled by
//! `d_model^-0.5`; the decoder's relative-position buckets are unidirectional;
//! padding keys are masked; attention scores are not scaled by `1/sqrt(d_kv)`
//! (T5 folds that into its initialisation).

use std::collections::BTreeMap;

use candle_core::{D, DType, Device, Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::layers::{KvCache, Linear, left_padded_mask, linear, padding_mask, take};
use crate::ops::rms_norm;
use crate::params::{Dropout, ParamStore};

/// The model's shape, as HF's T5 `config.json` names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    #[serde(default)]
    pub num_decoder_layers: Option<usize>,
    pub num_heads: usize,
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "default_dropout")]
    pub dropout_rate: f64,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// `relu` (T5 v1.0) or `gated-gelu` (v1.1, flan-t5).
    #[serde(default = "default_ff")]
    pub feed_forward_proj: String,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub pad_token_id: u32,
    #[serde(default = "one")]
    pub eos_token_id: u32,
    #[serde(default)]
    pub decoder_start_token_id: u32,
    #[serde(default = "t5_type")]
    pub model_type: String,
}

fn default_buckets() -> usize {
    32
}
fn default_max_distance() -> usize {
    128
}
fn default_dropout() -> f64 {
    0.1
}
fn default_eps() -> f64 {
    1e-6
}
fn default_ff() -> String {
    "relu".into()
}
fn yes() -> bool {
    true
}
fn one() -> u32 {
    1
}
fn t5_type() -> String {
    "t5".into()
}

impl T5Config {
    /// t5-small's shape (60M parameters with a 32,128 vocabulary).
    pub fn small(vocab_size: usize) -> T5Config {
        T5Config {
            vocab_size,
            d_model: 512,
            d_kv: 64,
            d_ff: 2048,
            num_layers: 6,
            num_decoder_layers: None,
            num_heads: 8,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            dropout_rate: 0.1,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "relu".into(),
            tie_word_embeddings: true,
            pad_token_id: 0,
            eos_token_id: 1,
            decoder_start_token_id: 0,
            model_type: "t5".into(),
        }
    }

    pub fn decoder_layers(&self) -> usize {
        self.num_decoder_layers.unwrap_or(self.num_layers)
    }

    fn gated(&self) -> bool {
        self.feed_forward_proj.starts_with("gated")
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if !matches!(self.feed_forward_proj.as_str(), "relu" | "gated-gelu") {
            return Err(format!(
                "feed_forward_proj {:?}: expected \"relu\" or \"gated-gelu\"",
                self.feed_forward_proj
            ));
        }
        if self.num_heads == 0 || self.d_kv == 0 || self.relative_attention_num_buckets < 4 {
            return Err("num_heads, d_kv and relative_attention_num_buckets (>= 4) must be set".into());
        }
        Ok(())
    }

    /// Every parameter's HF name and shape.
    pub fn parameter_shapes(&self) -> BTreeMap<String, Vec<usize>> {
        let (d, inner, ff, h) = (self.d_model, self.num_heads * self.d_kv, self.d_ff, self.num_heads);
        let mut m = BTreeMap::new();
        m.insert("shared.weight".into(), vec![self.vocab_size, d]);
        if !self.tie_word_embeddings {
            m.insert("lm_head.weight".into(), vec![self.vocab_size, d]);
        }
        let attn = |m: &mut BTreeMap<String, Vec<usize>>, p: &str| {
            for x in ["q", "k", "v"] {
                m.insert(format!("{p}.{x}.weight"), vec![inner, d]);
            }
            m.insert(format!("{p}.o.weight"), vec![d, inner]);
        };
        let ffn = |m: &mut BTreeMap<String, Vec<usize>>, p: &str| {
            if self.gated() {
                m.insert(format!("{p}.DenseReluDense.wi_0.weight"), vec![ff, d]);
                m.insert(format!("{p}.DenseReluDense.wi_1.weight"), vec![ff, d]);
            } else {
                m.insert(format!("{p}.DenseReluDense.wi.weight"), vec![ff, d]);
            }
            m.insert(format!("{p}.DenseReluDense.wo.weight"), vec![d, ff]);
            m.insert(format!("{p}.layer_norm.weight"), vec![d]);
        };
        for stack in ["encoder", "decoder"] {
            let layers = if stack == "encoder" {
                self.num_layers
            } else {
                self.decoder_layers()
            };
            for l in 0..layers {
                let b = format!("{stack}.block.{l}");
                attn(&mut m, &format!("{b}.layer.0.SelfAttention"));
                m.insert(format!("{b}.layer.0.layer_norm.weight"), vec![d]);
                if l == 0 {
                    m.insert(
                        format!("{b}.layer.0.SelfAttention.relative_attention_bias.weight"),
                        vec![self.relative_attention_num_buckets, h],
                    );
                }
                if stack == "encoder" {
                    ffn(&mut m, &format!("{b}.layer.1"));
                } else {
                    attn(&mut m, &format!("{b}.layer.1.EncDecAttention"));
                    m.insert(format!("{b}.layer.1.layer_norm.weight"), vec![d]);
                    ffn(&mut m, &format!("{b}.layer.2"));
                }
            }
            m.insert(format!("{stack}.final_layer_norm.weight"), vec![d]);
        }
        m
    }
}

/// HF's `_relative_position_bucket` for `relative = key - query`.
pub fn relative_position_bucket(relative: i64, bidirectional: bool, num_buckets: usize, max_distance: usize) -> usize {
    let mut buckets = num_buckets as i64;
    let mut ret = 0i64;
    let n = if bidirectional {
        buckets /= 2;
        if relative > 0 {
            ret += buckets;
        }
        relative.abs()
    } else {
        (-relative).max(0)
    };
    let max_exact = buckets / 2;
    if n < max_exact {
        ret += n;
    } else {
        let large = max_exact
            + ((n as f64 / max_exact as f64).ln() / (max_distance as f64 / max_exact as f64).ln()
                * (buckets - max_exact) as f64) as i64;
        ret += large.min(buckets - 1);
    }
    ret as usize
}

/// Keys and values of one decoder's generation so far: self-attention grows
/// a token at a time; cross-attention over the encoder is computed once.
pub struct T5Cache {
    self_kv: KvCache,
    cross_kv: Vec<Option<(Tensor, Tensor)>>,
}

impl T5Cache {
    pub fn new(layers: usize) -> T5Cache {
        T5Cache {
            self_kv: KvCache::new(layers),
            cross_kv: vec![None; layers],
        }
    }
    /// Decoder tokens cached so far.
    pub fn len(&self) -> usize {
        self.self_kv.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One attention block's projections (T5 has no biases); the first block
/// of each stack also holds the relative position bias table.
pub struct T5Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
}

/// The feed-forward's input projection: ReLU (T5) or gated GELU (T5 v1.1, flan-t5).
pub enum DenseIn {
    Relu(Linear),
    GatedGelu { wi_0: Linear, wi_1: Linear },
}

/// Pre-norm feed-forward with a residual.
pub struct FeedForward {
    pub norm: Tensor,
    pub wi: DenseIn,
    pub wo: Linear,
}

pub struct EncoderBlock {
    pub norm: Tensor,
    pub attn: T5Attention,
    pub ff: FeedForward,
}

pub struct DecoderBlock {
    pub self_norm: Tensor,
    pub self_attn: T5Attention,
    pub cross_norm: Tensor,
    pub cross_attn: T5Attention,
    pub ff: FeedForward,
}

/// The encoder-decoder; tensors share storage with the `ParamStore`'s vars.
pub struct T5 {
    pub config: T5Config,
    shared: Tensor,
    encoder: Vec<EncoderBlock>,
    encoder_norm: Tensor,
    /// The encoder's relative position bias table (bidirectional buckets).
    encoder_bias: Tensor,
    decoder: Vec<DecoderBlock>,
    decoder_norm: Tensor,
    /// The decoder's (unidirectional buckets).
    decoder_bias: Tensor,
    /// `None`: tied to `shared`, scaled by d_model^-0.5 as HF does.
    lm_head: Option<Linear>,
}

fn drop(x: Tensor, dropout: &mut Option<&mut Dropout>) -> Result<Tensor> {
    match dropout.as_deref_mut().filter(|d| d.p > 0.0) {
        Some(d) => d.apply(&x),
        None => Ok(x),
    }
}

fn attention(p: &mut BTreeMap<String, Tensor>, name: &str) -> Result<T5Attention> {
    let q = &mut BTreeMap::new();
    Ok(T5Attention {
        q: Linear::take(&format!("{name}.q"), p, q)?,
        k: Linear::take(&format!("{name}.k"), p, q)?,
        v: Linear::take(&format!("{name}.v"), p, q)?,
        o: Linear::take(&format!("{name}.o"), p, q)?,
    })
}

fn feed_forward(p: &mut BTreeMap<String, Tensor>, name: &str, gated: bool) -> Result<FeedForward> {
    let q = &mut BTreeMap::new();
    let d = format!("{name}.DenseReluDense");
    Ok(FeedForward {
        norm: take(p, &format!("{name}.layer_norm.weight"))?,
        wi: if gated {
            DenseIn::GatedGelu {
                wi_0: Linear::take(&format!("{d}.wi_0"), p, q)?,
                wi_1: Linear::take(&format!("{d}.wi_1"), p, q)?,
            }
        } else {
            DenseIn::Relu(Linear::take(&format!("{d}.wi"), p, q)?)
        },
        wo: Linear::take(&format!("{d}.wo"), p, q)?,
    })
}

impl T5Attention {
    /// Multi-head attention of `x` over `kv` (`(b, heads, tk, d_kv)` each),
    /// plus `bias` (position bias and masks, broadcast to `(b, heads, t, tk)`).
    fn attend(
        &self,
        c: &T5Config,
        x: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: &Tensor,
        dropout: &mut Option<&mut Dropout>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let q = self
            .q
            .forward_with(x, dropout.as_deref_mut())?
            .reshape((b, t, c.num_heads, c.d_kv))?
            .transpose(1, 2)?
            .contiguous()?;
        let scores = q.matmul(&k.t()?)?.broadcast_add(bias)?;
        let att = drop(crate::ops::softmax_last(&scores)?, dropout)?;
        let y = att.matmul(v)?.transpose(1, 2)?.reshape((b, t, c.num_heads * c.d_kv))?;
        self.o.forward_with(&y, dropout.as_deref_mut())
    }

    /// Keys and values of `x`, `(b, heads, t, d_kv)`.
    fn keys_values(&self, c: &T5Config, x: &Tensor, dropout: &mut Option<&mut Dropout>) -> Result<(Tensor, Tensor)> {
        let (b, t, _) = x.dims3()?;
        let heads =
            |y: Tensor| -> Result<Tensor> { y.reshape((b, t, c.num_heads, c.d_kv))?.transpose(1, 2)?.contiguous() };
        let k = self.k.forward_with(x, dropout.as_deref_mut())?;
        let v = self.v.forward_with(x, dropout.as_deref_mut())?;
        Ok((heads(k)?, heads(v)?))
    }
}

impl FeedForward {
    fn forward(&self, c: &T5Config, x: &Tensor, dropout: &mut Option<&mut Dropout>) -> Result<Tensor> {
        let h = rms_norm(x, &self.norm, c.layer_norm_epsilon)?;
        let act = match &self.wi {
            DenseIn::GatedGelu { wi_0, wi_1 } => {
                let g = wi_0.forward_with(&h, dropout.as_deref_mut())?.gelu()?;
                (g * wi_1.forward_with(&h, dropout.as_deref_mut())?)?
            }
            DenseIn::Relu(wi) => wi.forward_with(&h, dropout.as_deref_mut())?.relu()?,
        };
        let act = drop(act, dropout)?;
        let y = self.wo.forward_with(&act, dropout.as_deref_mut())?;
        x + drop(y, dropout)?
    }
}

impl T5 {
    pub fn new(config: &T5Config, params: &ParamStore) -> Result<T5> {
        config.validate().map_err(candle_core::Error::msg)?;
        T5::from_tensors(config, params.tensors_for(&config.parameter_shapes())?)
    }

    /// The model over a frozen `base` (detached: no gradient is formed for
    /// it) with `adapters` on their projections.
    pub fn with_adapters(config: &T5Config, base: &ParamStore, adapters: &crate::lora::Adapters) -> Result<T5> {
        config.validate().map_err(candle_core::Error::msg)?;
        let mut m = T5::from_tensors(config, base.frozen_tensors_for(&config.parameter_shapes())?)?;
        adapters
            .attach(m.linears_mut())
            .map_err(|e| candle_core::Error::msg(e.to_string()))?;
        Ok(m)
    }

    /// Every projection of both stacks (not the output head).
    pub fn linears_mut(&mut self) -> impl Iterator<Item = &mut Linear> {
        fn ff(f: &mut FeedForward) -> Vec<&mut Linear> {
            let mut v = match &mut f.wi {
                DenseIn::Relu(wi) => vec![wi],
                DenseIn::GatedGelu { wi_0, wi_1 } => vec![wi_0, wi_1],
            };
            v.push(&mut f.wo);
            v
        }
        fn attn(a: &mut T5Attention) -> [&mut Linear; 4] {
            [&mut a.q, &mut a.k, &mut a.v, &mut a.o]
        }
        let enc = self.encoder.iter_mut().flat_map(|b| {
            let mut v: Vec<&mut Linear> = attn(&mut b.attn).into_iter().collect();
            v.extend(ff(&mut b.ff));
            v
        });
        let dec = self.decoder.iter_mut().flat_map(|b| {
            let mut v: Vec<&mut Linear> = attn(&mut b.self_attn).into_iter().collect();
            v.extend(attn(&mut b.cross_attn));
            v.extend(ff(&mut b.ff));
            v
        });
        enc.chain(dec)
    }

    fn from_tensors(config: &T5Config, mut p: BTreeMap<String, Tensor>) -> Result<T5> {
        let p = &mut p;
        let gated = config.gated();
        let rel = |stack: &str| format!("{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight");
        let encoder_bias = take(p, &rel("encoder"))?;
        let decoder_bias = take(p, &rel("decoder"))?;
        let mut encoder = Vec::with_capacity(config.num_layers);
        for l in 0..config.num_layers {
            let b = format!("encoder.block.{l}");
            encoder.push(EncoderBlock {
                norm: take(p, &format!("{b}.layer.0.layer_norm.weight"))?,
                attn: attention(p, &format!("{b}.layer.0.SelfAttention"))?,
                ff: feed_forward(p, &format!("{b}.layer.1"), gated)?,
            });
        }
        let mut decoder = Vec::with_capacity(config.decoder_layers());
        for l in 0..config.decoder_layers() {
            let b = format!("decoder.block.{l}");
            decoder.push(DecoderBlock {
                self_norm: take(p, &format!("{b}.layer.0.layer_norm.weight"))?,
                self_attn: attention(p, &format!("{b}.layer.0.SelfAttention"))?,
                cross_norm: take(p, &format!("{b}.layer.1.layer_norm.weight"))?,
                cross_attn: attention(p, &format!("{b}.layer.1.EncDecAttention"))?,
                ff: feed_forward(p, &format!("{b}.layer.2"), gated)?,
            });
        }
        let lm_head = if p.contains_key("lm_head.weight") {
            Some(Linear::take("lm_head", p, &mut BTreeMap::new())?)
        } else {
            None
        };
        Ok(T5 {
            config: config.clone(),
            shared: take(p, "shared.weight")?,
            encoder,
            encoder_norm: take(p, "encoder.final_layer_norm.weight")?,
            encoder_bias,
            decoder,
            decoder_norm: take(p, "decoder.final_layer_norm.weight")?,
            decoder_bias,
            lm_head,
        })
    }

    pub fn device(&self) -> &Device {
        self.shared.device()
    }

    /// `(1, heads, q, k)` position bias for queries at `q0..q0+q` and keys
    /// at `0..k`: bidirectional buckets for the encoder, causal for the decoder.
    fn position_bias(
        &self,
        encoder: bool,
        q0: usize,
        q: usize,
        k: usize,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let c = &self.config;
        let mut idx = Vec::with_capacity(q * k);
        for i in q0..q0 + q {
            for j in 0..k {
                idx.push(relative_position_bucket(
                    j as i64 - i as i64,
                    encoder,
                    c.relative_attention_num_buckets,
                    c.relative_attention_max_distance,
                ) as u32);
            }
        }
        let idx = Tensor::from_vec(idx, q * k, dev)?;
        let table = if encoder {
            &self.encoder_bias
        } else {
            &self.decoder_bias
        };
        table
            .index_select(&idx, 0)?
            .reshape((q, k, c.num_heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)?
            .to_dtype(dtype)
    }

    fn embed(&self, ids: &Tensor, dtype: DType) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        self.shared
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, self.config.d_model))?
            .to_dtype(dtype)
    }

    /// Encoder states `(b, t, d_model)` for right-padded `ids` of `lengths`.
    pub fn encode(
        &self,
        ids: &Tensor,
        lengths: &[usize],
        mut dropout: Option<&mut Dropout>,
        dtype: DType,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (_, t) = ids.dims2()?;
        let dev = ids.device();
        let bias = self
            .position_bias(true, 0, t, t, dtype, dev)?
            .broadcast_add(&padding_mask(lengths, t, dev)?.to_dtype(dtype)?)?;
        let mut x = drop(self.embed(ids, dtype)?, &mut dropout)?;
        for blk in &self.encoder {
            let h = rms_norm(&x, &blk.norm, c.layer_norm_epsilon)?;
            let (k, v) = blk.attn.keys_values(c, &h, &mut dropout)?;
            let y = blk.attn.attend(c, &h, &k, &v, &bias, &mut dropout)?;
            x = (x + drop(y, &mut dropout)?)?;
            x = blk.ff.forward(c, &x, &mut dropout)?;
        }
        let x = rms_norm(&x, &self.encoder_norm, c.layer_norm_epsilon)?;
        drop(x, &mut dropout)
    }

    /// Decoder logits for `dec_ids` `(b, t)` (teacher forcing: the targets
    /// shifted right behind `decoder_start_token_id`), attending to `enc`
    /// (with `enc_lengths`). With a cache, `dec_ids` continue what it holds.
    pub fn decode(
        &self,
        dec_ids: &Tensor,
        enc: &Tensor,
        enc_lengths: &[usize],
        mut cache: Option<&mut T5Cache>,
        mut dropout: Option<&mut Dropout>,
        dtype: DType,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (_, t) = dec_ids.dims2()?;
        let dev = dec_ids.device();
        let past = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let tk = past + t;
        // Causal: query i (at past + i) sees keys 0..=past + i.
        let self_bias = self
            .position_bias(false, past, t, tk, dtype, dev)?
            .broadcast_add(&left_padded_mask(&[0], t, past, dev)?.to_dtype(dtype)?)?;
        let enc_t = enc.dim(1)?;
        let cross_bias = padding_mask(enc_lengths, enc_t, dev)?.to_dtype(dtype)?;
        let mut x = drop(self.embed(dec_ids, dtype)?, &mut dropout)?;
        for (l, blk) in self.decoder.iter().enumerate() {
            let h = rms_norm(&x, &blk.self_norm, c.layer_norm_epsilon)?;
            let (k, v) = blk.self_attn.keys_values(c, &h, &mut dropout)?;
            let (k, v) = match cache.as_deref_mut() {
                Some(cc) => cc.self_kv.append(l, k, v)?,
                None => (k, v),
            };
            let y = blk.self_attn.attend(c, &h, &k, &v, &self_bias, &mut dropout)?;
            x = (x + drop(y, &mut dropout)?)?;

            let h = rms_norm(&x, &blk.cross_norm, c.layer_norm_epsilon)?;
            let cached = cache.as_deref().and_then(|cc| cc.cross_kv[l].clone());
            let (k, v) = match cached {
                Some(kv) => kv,
                None => {
                    let kv = blk.cross_attn.keys_values(c, enc, &mut dropout)?;
                    if let Some(cc) = cache.as_deref_mut() {
                        cc.cross_kv[l] = Some((kv.0.detach(), kv.1.detach()));
                    }
                    kv
                }
            };
            let y = blk.cross_attn.attend(c, &h, &k, &v, &cross_bias, &mut dropout)?;
            x = (x + drop(y, &mut dropout)?)?;
            x = blk.ff.forward(c, &x, &mut dropout)?;
        }
        let x = rms_norm(&x, &self.decoder_norm, c.layer_norm_epsilon)?;
        let x = drop(x, &mut dropout)?;
        let logits = match &self.lm_head {
            Some(head) => head.forward(&x)?,
            None => linear(&(x * (c.d_model as f64).powf(-0.5))?, &self.shared, None)?,
        };
        logits.to_dtype(crate::layers::widened(dtype))
    }

    /// Teacher-forced logits `(b, t_dec, vocab)`.
    pub fn forward_train(
        &self,
        enc_ids: &Tensor,
        enc_lengths: &[usize],
        dec_ids: &Tensor,
        mut dropout: Option<&mut Dropout>,
        dtype: DType,
    ) -> Result<Tensor> {
        let enc = self.encode(enc_ids, enc_lengths, dropout.as_deref_mut(), dtype)?;
        self.decode(dec_ids, &enc, enc_lengths, None, dropout, dtype)
    }

    /// Greedy decoding of right-padded inputs, each up to `max_new_tokens` or
    /// `eos_token_id`; the cache keeps decoder keys/values and the
    /// cross-attention's projections of the encoder.
    pub fn generate(
        &self,
        enc_ids: &Tensor,
        enc_lengths: &[usize],
        max_new_tokens: usize,
        dtype: DType,
    ) -> Result<Vec<Vec<u32>>> {
        let c = &self.config;
        let (b, _) = enc_ids.dims2()?;
        let dev = enc_ids.device().clone();
        let enc = self.encode(enc_ids, enc_lengths, None, dtype)?;
        let mut cache = T5Cache::new(c.decoder_layers());
        let mut next = vec![c.decoder_start_token_id; b];
        let mut out = vec![Vec::new(); b];
        let mut done = vec![false; b];
        for _ in 0..max_new_tokens {
            let ids = Tensor::from_vec(next.clone(), (b, 1), &dev)?;
            let logits = self.decode(&ids, &enc, enc_lengths, Some(&mut cache), None, dtype)?;
            next = logits.squeeze(1)?.argmax(D::Minus1)?.to_vec1()?;
            for r in 0..b {
                if done[r] {
                    continue;
                }
                if next[r] == c.eos_token_id {
                    done[r] = true;
                } else {
                    out[r].push(next[r]);
                }
            }
            if done.iter().all(|&d| d) {
                break;
            }
        }
        Ok(out)
    }
}
