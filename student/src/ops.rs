//! Fused CPU ops with hand-written backward passes.
//!
//! candle's composed softmax (max, subtract, exp, sum, divide) makes five
//! full-size tensors forward and more backward, each a separate pass; its
//! fused `softmax_last_dim` has no gradient. These do one pass each way, rows
//! in parallel. Other devices fall back to the composed op (which carries a
//! gradient). Checked against finite differences in `tests/gradients.rs`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, D, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Softmax over the last dimension, with a gradient.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        x.contiguous()?.apply_op1(SoftmaxLast)
    } else {
        candle_nn::ops::softmax(x, D::Minus1)
    }
}

fn rows<'a, T>(s: &'a [T], l: &Layout) -> Result<(&'a [T], usize)> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::msg("fused op: input must be contiguous"))?;
    Ok((&s[a..b], l.dims().last().copied().unwrap_or(1).max(1)))
}

macro_rules! softmax_rows {
    ($x:expr, $dim:expr, $t:ty) => {{
        let mut out = vec![0 as $t; $x.len()];
        out.par_chunks_mut($dim).zip($x.par_chunks($dim)).for_each(|(o, x)| {
            let max = x.iter().copied().fold(<$t>::NEG_INFINITY, <$t>::max);
            let mut sum = 0 as $t;
            for (o, &v) in o.iter_mut().zip(x) {
                *o = (v - max).exp();
                sum += *o;
            }
            let inv = 1 as $t / sum;
            o.iter_mut().for_each(|v| *v *= inv);
        });
        out
    }};
}

struct SoftmaxLast;

impl CustomOp1 for SoftmaxLast {
    fn name(&self) -> &'static str {
        "stepwise-softmax-last"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(v) => {
                let (x, d) = rows(v, l)?;
                CpuStorage::F32(softmax_rows!(x, d, f32))
            }
            CpuStorage::F64(v) => {
                let (x, d) = rows(v, l)?;
                CpuStorage::F64(softmax_rows!(x, d, f64))
            }
            _ => candle_core::bail!("stepwise-softmax-last: f32 or f64 only"),
        };
        Ok((out, l.shape().clone()))
    }

    /// dx = y ⊙ (g − Σ g⊙y), per row.
    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&g.contiguous()?, &SoftmaxBwd)?))
    }
}

macro_rules! softmax_bwd_rows {
    ($y:expr, $g:expr, $dim:expr, $t:ty) => {{
        let mut out = vec![0 as $t; $y.len()];
        out.par_chunks_mut($dim)
            .zip($y.par_chunks($dim).zip($g.par_chunks($dim)))
            .for_each(|(o, (y, g))| {
                let dot: $t = y.iter().zip(g).map(|(a, b)| a * b).sum();
                for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
                    *o = y * (g - dot);
                }
            });
        out
    }};
}

struct SoftmaxBwd;

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "stepwise-softmax-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match (s1, s2) {
            (CpuStorage::F32(y), CpuStorage::F32(g)) => {
                let ((y, d), (g, _)) = (rows(y, l1)?, rows(g, l2)?);
                CpuStorage::F32(softmax_bwd_rows!(y, g, d, f32))
            }
            (CpuStorage::F64(y), CpuStorage::F64(g)) => {
                let ((y, d), (g, _)) = (rows(y, l1)?, rows(g, l2)?);
                CpuStorage::F64(softmax_bwd_rows!(y, g, d, f64))
            }
            _ => candle_core::bail!("stepwise-softmax-bwd: f32 or f64 only"),
        };
        Ok((out, l1.shape().clone()))
    }
}
