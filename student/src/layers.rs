//! The layers both students share: projections (dense for training,
//! block-quantized for a GGUF teacher), the attention masks, the KV cache
//! and seeded dropout. The models (`llama`, `t5`) are built from these as
//! typed blocks.

use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{D, DType, Device, Module, Result, Tensor};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

/// `x @ w^T (+ b)` as one 2-D matmul over flattened batch and time (about 2×
/// faster than the broadcast form on CPU). `w` is a leaf: a variable being
/// trained, or a frozen tensor (a LoRA student's base, an inference model),
/// whose gradient is then never formed (see [`crate::ops::frozen_matmul`]).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let frozen = !w.is_variable();
    let w = w.to_dtype(x.dtype())?;
    over_rows(x, b, |rows| match frozen {
        true => crate::ops::frozen_matmul(rows, &w),
        false => rows.matmul(&w.t()?),
    })
}

/// `f` applied to `x` flattened to `(rows, last)`, `b` added to every row,
/// and the leading dimensions restored.
pub fn over_rows(x: &Tensor, b: Option<&Tensor>, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
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
pub fn widened(dtype: DType) -> DType {
    match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    }
}

/// A projection's weight: a tensor (trainable, sharing storage with its
/// `ParamStore` variable), or block-quantized (inference only).
pub enum Weight {
    Dense(Tensor),
    Quantized(QMatMul),
}

/// `x @ W^T (+ b)`: one named projection of a model (`<name>.weight`,
/// `<name>.bias`), plus a LoRA branch when the student has adapters on it.
pub struct Linear {
    /// The HF module name (`model.layers.0.self_attn.q_proj`), by which
    /// adapters find their projection.
    pub name: String,
    pub weight: Weight,
    pub bias: Option<Tensor>,
    pub lora: Option<crate::lora::LoraBranch>,
}

impl Linear {
    /// The projection `name`, taken from the model's dense tensors `p` and
    /// quantized matrices `q` (a quantized weight wins).
    pub fn take(name: &str, p: &mut BTreeMap<String, Tensor>, q: &mut BTreeMap<String, QMatMul>) -> Result<Linear> {
        let w = format!("{name}.weight");
        let weight = match q.remove(&w) {
            Some(m) => Weight::Quantized(m),
            None => Weight::Dense(take(p, &w)?),
        };
        Ok(Linear {
            name: name.to_string(),
            weight,
            bias: p.remove(&format!("{name}.bias")),
            lora: None,
        })
    }

    /// The projection, plus `scale · B(A(dropout(x)))` when it has adapters.
    /// `dropout` is the step's generator (training only); the branch's own
    /// rate applies.
    pub fn forward_with(&self, x: &Tensor, dropout: Option<&mut Dropout>) -> Result<Tensor> {
        match (&self.lora, &self.weight) {
            // Same input for base and branch (no branch dropout this step): one op.
            (Some(l), Weight::Dense(w)) if !w.is_variable() && (l.dropout == 0.0 || dropout.is_none()) => {
                let w = w.to_dtype(x.dtype())?;
                over_rows(x, self.bias.as_ref(), |rows| {
                    crate::ops::lora_linear(rows, &w, &l.a, &l.b, l.scale)
                })
            }
            (Some(l), _) => self.forward_base(x)? + l.forward(x, dropout)?,
            (None, _) => self.forward_base(x),
        }
    }

    /// [`Self::forward_with`] outside training (no dropout).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, None)
    }

    fn forward_base(&self, x: &Tensor) -> Result<Tensor> {
        let q = match &self.weight {
            Weight::Dense(w) => return linear(x, w, self.bias.as_ref()),
            Weight::Quantized(q) => q,
        };
        let rows = x.elem_count() / x.dim(D::Minus1)?.max(1);
        if rows >= DEQUANTIZE_ROWS
            && let QMatMul::QTensor(w) = q
            && w.dtype() == GgmlDType::Q8_0
        {
            return linear(x, &w.dequantize(x.device())?, self.bias.as_ref());
        }
        over_rows(x, self.bias.as_ref(), |rows| q.forward(&rows.contiguous()?))
    }
}

/// Removes the tensor `name` from `p`; an error names it when it is missing.
pub fn take(p: &mut BTreeMap<String, Tensor>, name: &str) -> Result<Tensor> {
    p.remove(name)
        .ok_or_else(|| candle_core::Error::msg(format!("missing tensor {name}")))
}

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

    /// Keeps only the batch rows `rows` (dim 0), in that order: a decoding
    /// batch drops the rows that have finished.
    pub fn retain_rows(&mut self, rows: &[usize]) -> Result<()> {
        let Some(dev) = self.layers.iter().flatten().next().map(|(k, _)| k.device().clone()) else {
            return Ok(());
        };
        let idx = Tensor::from_vec(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), rows.len(), &dev)?;
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.index_select(&idx, 0)?;
            *v = v.index_select(&idx, 0)?;
        }
        Ok(())
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
    let gaps: Vec<(usize, usize)> = pads.iter().map(|&p| (0, p)).collect();
    gapped_mask(&gaps, t, cached, dev)
}

/// [`left_padded_mask`] with each row's padding at `(start, len)` instead of
/// at the front: rows that share a prompt prefix cached once are padded
/// between that prefix and their own suffix.
pub fn gapped_mask(gaps: &[(usize, usize)], t: usize, cached: usize, dev: &Device) -> Result<Tensor> {
    let b = gaps.len();
    let tk = cached + t;
    let mut m = vec![0f32; b * t * tk];
    for (r, &(start, len)) in gaps.iter().enumerate() {
        for i in 0..t {
            for j in 0..tk {
                if j > cached + i || (j >= start && j < start + len) {
                    m[(r * t + i) * tk + j] = MASKED;
                }
            }
        }
    }
    Tensor::from_vec(m, (b, 1, t, tk), dev)
}
/// `(b, 1, 1, t)` additive mask hiding padding keys of right-padded rows.
pub fn padding_mask(lengths: &[usize], t: usize, dev: &Device) -> Result<Tensor> {
    let mut m = vec![0f32; lengths.len() * t];
    for (r, &len) in lengths.iter().enumerate() {
        m[r * t + len.min(t)..(r + 1) * t].fill(MASKED);
    }
    Tensor::from_vec(m, (lengths.len(), 1, 1, t), dev)
}

/// Inverted dropout with masks drawn from a seeded generator, so a resumed
/// run draws the same masks (candle's `ops::dropout` uses an unseeded one).
pub struct Dropout {
    pub p: f32,
    rng: ChaCha8Rng,
}

impl Dropout {
    /// `seed` should mix the run seed and the step, so each step's masks are
    /// fixed regardless of where training was resumed.
    pub fn new(p: f32, seed: u64) -> Dropout {
        Dropout {
            p,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    pub fn apply(&mut self, x: &Tensor) -> Result<Tensor> {
        self.apply_rate(x, self.p)
    }

    /// Dropout at rate `p` from this generator (a LoRA branch has its own rate).
    pub fn apply_rate(&mut self, x: &Tensor, p: f32) -> Result<Tensor> {
        if p <= 0.0 {
            return Ok(x.clone());
        }
        let scale = 1.0 / (1.0 - p);
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| if self.rng.random::<f32>() < p { 0.0 } else { scale })
            .collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        x * mask
    }
}
