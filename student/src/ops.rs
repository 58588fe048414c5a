//! Fused CPU ops with hand-written backward passes: softmax, RMSNorm, rotary
//! embedding, SwiGLU and the per-row negative log-likelihood.
//!
//! candle's composed forms make a full-size tensor per elementary op, each a
//! separate pass, and its backward adds a zero-filled gradient buffer for
//! every node; its fused `softmax_last_dim`, `rms_norm` and `rope` have no
//! gradient. These do one pass each way, rows in parallel. Other devices fall back to the composed op (which carries a
//! gradient). Checked against finite differences in `tests/gradients.rs`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, D, DType, Layout, Result, Shape, Tensor};
use num_traits::Float;
use rayon::prelude::*;

/// Softmax over the last dimension, with a gradient.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if fused(&[x]) {
        return x.contiguous()?.apply_op1(SoftmaxLast);
    }
    candle_nn::ops::softmax(x, D::Minus1)
}

/// The row length of a tensor seen as rows over its last dimension.
fn last_dim(l: &Layout) -> usize {
    l.dims().last().copied().unwrap_or(1).max(1)
}

/// The contiguous slice of a CPU tensor's storage.
fn slice<'a, T>(s: &'a [T], l: &Layout) -> Result<&'a [T]> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::msg("fused op: input must be contiguous"))?;
    Ok(&s[a..b])
}

/// Dispatches a float computation over f32/f64 storages; other dtypes fail.
macro_rules! float_op {
    ($name:expr, $($s:ident),+ => |$($v:ident),+| $body:expr) => {{
        match ($($s,)+) {
            ($(CpuStorage::F32($v),)+) => CpuStorage::F32($body),
            ($(CpuStorage::F64($v),)+) => CpuStorage::F64($body),
            _ => candle_core::bail!("{}: f32 or f64 only, all inputs of one dtype", $name),
        }
    }};
}

/// True where the fused CPU kernels apply; elsewhere the composed op runs.
fn fused(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64))
        && ts.windows(2).all(|w| w[0].dtype() == w[1].dtype())
}

struct SoftmaxLast;

impl CustomOp1 for SoftmaxLast {
    fn name(&self) -> &'static str {
        "stepwise-softmax-last"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = last_dim(l);
        fn run<T: Float + Send + Sync>(x: &[T], d: usize) -> Vec<T> {
            let mut out = vec![T::zero(); x.len()];
            out.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(o, x)| {
                let max = x.iter().copied().fold(T::neg_infinity(), T::max);
                let mut sum = T::zero();
                for (o, &v) in o.iter_mut().zip(x) {
                    *o = (v - max).exp();
                    sum = sum + *o;
                }
                let inv = T::one() / sum;
                o.iter_mut().for_each(|v| *v = *v * inv);
            });
            out
        }
        let out = float_op!(self.name(), s => |x| run(slice(x, l)?, d));
        Ok((out, l.shape().clone()))
    }

    /// dx = y ⊙ (g − Σ g⊙y), per row.
    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&g.contiguous()?, &SoftmaxBwd)?))
    }
}

struct SoftmaxBwd;

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "stepwise-softmax-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = last_dim(l1);
        fn run<T: Float + Send + Sync>(y: &[T], g: &[T], d: usize) -> Vec<T> {
            let mut out = vec![T::zero(); y.len()];
            out.par_chunks_mut(d)
                .zip(y.par_chunks(d).zip(g.par_chunks(d)))
                .for_each(|(o, (y, g))| {
                    let dot = y.iter().zip(g).fold(T::zero(), |a, (&y, &g)| a + y * g);
                    for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
                        *o = y * (g - dot);
                    }
                });
            out
        }
        let out = float_op!(self.name(), s1, s2 => |y, g| run(slice(y, l1)?, slice(g, l2)?, d));
        Ok((out, l1.shape().clone()))
    }
}

/// Rows per partial sum in reductions over rows: fixed, so the summation
/// order (and an exactly resumed run's weights) does not depend on threads.
const REDUCE_ROWS: usize = 64;

/// `x / sqrt(mean(x²) + eps) * w` over the last dimension, with a gradient:
/// one pass forward and two backward, against about six tensors each way
/// composed.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if fused(&[x, w]) {
        return x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps });
    }
    let dtype = x.dtype();
    let x = x.to_dtype(crate::layers::widened(dtype))?;
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let y = x.broadcast_div(&(ms + eps)?.sqrt()?)?;
    y.to_dtype(dtype)?.broadcast_mul(&w.to_dtype(dtype)?)
}

fn inv_rms<T: Float>(x: &[T], eps: f64) -> T {
    let ms = x.iter().fold(T::zero(), |a, &v| a + v * v) / T::from(x.len()).unwrap();
    T::one() / (ms + T::from(eps).unwrap()).sqrt()
}

struct RmsNorm {
    eps: f64,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "stepwise-rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let h = last_dim(l1);
        fn run<T: Float + Send + Sync>(x: &[T], w: &[T], h: usize, eps: f64) -> Vec<T> {
            let mut out = vec![T::zero(); x.len()];
            out.par_chunks_mut(h).zip(x.par_chunks(h)).for_each(|(o, x)| {
                let r = inv_rms(x, eps);
                for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
                    *o = x * r * w;
                }
            });
            out
        }
        let out = float_op!(self.name(), s1, s2 => |x, w| run(slice(x, l1)?, slice(w, l2)?, h, self.eps));
        Ok((out, l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let dx = x.apply_op3_no_bwd(w, &g, &RmsNormBwdX { eps: self.eps })?;
        // A norm weight is a leaf: a variable, or frozen (a LoRA student's
        // base), whose gradient would be a wasted reduction over every row.
        let dw = match w.is_variable() {
            true => Some(x.apply_op2_no_bwd(&g, &RmsNormBwdW { eps: self.eps })?),
            false => None,
        };
        Ok((Some(dx), dw))
    }
}

/// dx = r·(g⊙w) − x·r³·mean((g⊙w)⊙x), per row, r = 1/rms(x).
struct RmsNormBwdX {
    eps: f64,
}

impl CustomOp3 for RmsNormBwdX {
    fn name(&self) -> &'static str {
        "stepwise-rms-norm-bwd-x"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let h = last_dim(l1);
        fn run<T: Float + Send + Sync>(x: &[T], w: &[T], g: &[T], h: usize, eps: f64) -> Vec<T> {
            let mut out = vec![T::zero(); x.len()];
            let n = T::from(h).unwrap();
            out.par_chunks_mut(h)
                .zip(x.par_chunks(h).zip(g.par_chunks(h)))
                .for_each(|(o, (x, g))| {
                    let r = inv_rms(x, eps);
                    let dot = x
                        .iter()
                        .zip(g)
                        .zip(w)
                        .fold(T::zero(), |a, ((&x, &g), &w)| a + g * w * x);
                    let c = r * r * r * dot / n;
                    for (((o, &x), &g), &w) in o.iter_mut().zip(x).zip(g).zip(w) {
                        *o = r * g * w - x * c;
                    }
                });
            out
        }
        let out = float_op!(self.name(), s1, s2, s3 => |x, w, g| run(slice(x, l1)?, slice(w, l2)?, slice(g, l3)?, h, self.eps));
        Ok((out, l1.shape().clone()))
    }
}

/// dw = Σ_rows g⊙x·r.
struct RmsNormBwdW {
    eps: f64,
}

impl CustomOp2 for RmsNormBwdW {
    fn name(&self) -> &'static str {
        "stepwise-rms-norm-bwd-w"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let h = last_dim(l1);
        fn run<T: Float + Send + Sync>(x: &[T], g: &[T], h: usize, eps: f64) -> Vec<T> {
            let partial: Vec<Vec<T>> = x
                .par_chunks(h * REDUCE_ROWS)
                .zip(g.par_chunks(h * REDUCE_ROWS))
                .map(|(x, g)| {
                    let mut acc = vec![T::zero(); h];
                    for (x, g) in x.chunks(h).zip(g.chunks(h)) {
                        let r = inv_rms(x, eps);
                        for ((a, &x), &g) in acc.iter_mut().zip(x).zip(g) {
                            *a = *a + g * x * r;
                        }
                    }
                    acc
                })
                .collect();
            let mut out = vec![T::zero(); h];
            for p in partial {
                for (o, v) in out.iter_mut().zip(p) {
                    *o = *o + v;
                }
            }
            out
        }
        let out = float_op!(self.name(), s1, s2 => |x, g| run(slice(x, l1)?, slice(g, l2)?, h, self.eps));
        Ok((out, Shape::from(h)))
    }
}

/// Rotary embedding in HF's half-split layout, with a gradient: `x`
/// `(b, heads, t, d)`, `cos`/`sin` `(b, 1, t, d)` (no gradient: positions).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if fused(&[x, cos, sin]) && x.rank() == 4 && cos.dims() == [x.dim(0)?, 1, x.dim(2)?, x.dim(3)?] {
        return x
            .contiguous()?
            .apply_op3(&cos.contiguous()?, &sin.contiguous()?, Rope { backward: false });
    }
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?
}

/// Forward: y = x⊙cos + rotate_half(x)⊙sin. Backward (its transpose):
/// dx = g⊙cos + rotate_half(g⊙sin)ᵀ, i.e. the sign moves to the other half.
struct Rope {
    backward: bool,
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "stepwise-rope"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = l1.dims();
        let (heads, t, d) = (dims[1], dims[2], dims[3]);
        let back = self.backward;
        fn run<T: Float + Send + Sync>(
            x: &[T],
            c: &[T],
            s: &[T],
            heads: usize,
            t: usize,
            d: usize,
            back: bool,
        ) -> Vec<T> {
            let half = d / 2;
            let mut out = vec![T::zero(); x.len()];
            out.par_chunks_mut(d)
                .zip(x.par_chunks(d))
                .enumerate()
                .for_each(|(r, (o, x))| {
                    let at = (r / (heads * t) * t + r % t) * d;
                    let (c, s) = (&c[at..at + d], &s[at..at + d]);
                    for j in 0..half {
                        if back {
                            o[j] = x[j] * c[j] + x[j + half] * s[j + half];
                            o[j + half] = x[j + half] * c[j + half] - x[j] * s[j];
                        } else {
                            o[j] = x[j] * c[j] - x[j + half] * s[j];
                            o[j + half] = x[j + half] * c[j + half] + x[j] * s[j + half];
                        }
                    }
                });
            out
        }
        let out = float_op!(self.name(), s1, s2, s3 => |x, c, s| run(slice(x, l1)?, slice(c, l2)?, slice(s, l3)?, heads, t, d, back));
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = g.contiguous()?.apply_op3_no_bwd(cos, sin, &Rope { backward: true })?;
        Ok((Some(dx), None, None))
    }
}

/// `silu(gate) ⊙ up`, the SwiGLU product, with a gradient: one pass each way
/// where the composed form makes several tensors.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if fused(&[gate, up]) && gate.dims() == up.dims() {
        return gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu);
    }
    candle_nn::ops::silu(gate)? * up
}

fn sigmoid<T: Float>(a: T) -> T {
    T::one() / (T::one() + (-a).exp())
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "stepwise-swiglu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        fn run<T: Float + Send + Sync>(a: &[T], b: &[T]) -> Vec<T> {
            a.par_iter().zip(b).map(|(&a, &b)| a * sigmoid(a) * b).collect()
        }
        let out = float_op!(self.name(), s1, s2 => |a, b| run(slice(a, l1)?, slice(b, l2)?));
        Ok((out, l1.shape().clone()))
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let da = a.apply_op3_no_bwd(b, &g, &SwiGluBwd)?;
        let db = (candle_nn::ops::silu(a)? * &g)?;
        Ok((Some(da), Some(db)))
    }
}

/// d gate = g ⊙ up ⊙ σ(a)(1 + a(1 − σ(a))).
struct SwiGluBwd;

impl CustomOp3 for SwiGluBwd {
    fn name(&self) -> &'static str {
        "stepwise-swiglu-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn run<T: Float + Send + Sync>(a: &[T], b: &[T], g: &[T]) -> Vec<T> {
            a.par_iter()
                .zip(b)
                .zip(g)
                .map(|((&a, &b), &g)| {
                    let s = sigmoid(a);
                    g * b * s * (T::one() + a * (T::one() - s))
                })
                .collect()
        }
        let out = float_op!(self.name(), s1, s2, s3 => |a, b, g| run(slice(a, l1)?, slice(b, l2)?, slice(g, l3)?));
        Ok((out, l1.shape().clone()))
    }
}

/// Per-row negative log-likelihood of `targets` `(n)` u32 under `logits`
/// `(n, vocab)`, with a gradient for the logits: one pass each way over the
/// largest tensor of a step, where log_softmax + gather make several.
pub fn nll_rows(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if fused(&[logits]) && targets.dtype() == DType::U32 {
        return logits.contiguous()?.apply_op2(&targets.contiguous()?, NllRows);
    }
    let lp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    lp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()
}

fn logsumexp<T: Float>(x: &[T]) -> T {
    let max = x.iter().copied().fold(T::neg_infinity(), T::max);
    max + x.iter().fold(T::zero(), |a, &v| a + (v - max).exp()).ln()
}

struct NllRows;

impl CustomOp2 for NllRows {
    fn name(&self) -> &'static str {
        "stepwise-nll-rows"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let v = last_dim(l1);
        let CpuStorage::U32(t) = s2 else {
            candle_core::bail!("{}: targets must be u32", self.name())
        };
        let t = slice(t, l2)?;
        fn run<T: Float + Send + Sync>(x: &[T], t: &[u32], v: usize) -> Result<Vec<T>> {
            x.par_chunks(v)
                .zip(t.par_iter())
                .map(|(x, &t)| match x.get(t as usize) {
                    Some(&xt) => Ok(logsumexp(x) - xt),
                    None => Err(candle_core::Error::msg(format!(
                        "target {t} outside a vocabulary of {v}"
                    ))),
                })
                .collect()
        }
        let out = float_op!(self.name(), s1 => |x| run(slice(x, l1)?, t, v)?);
        Ok((out, Shape::from(t.len())))
    }

    fn bwd(&self, x: &Tensor, t: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(x.apply_op3_no_bwd(t, &g.contiguous()?, &NllRowsBwd)?), None))
    }
}

/// d logits = g_row ⊙ (softmax(row) − onehot(target)).
struct NllRowsBwd;

impl CustomOp3 for NllRowsBwd {
    fn name(&self) -> &'static str {
        "stepwise-nll-rows-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let v = last_dim(l1);
        let CpuStorage::U32(t) = s2 else {
            candle_core::bail!("{}: targets must be u32", self.name())
        };
        let t = slice(t, l2)?;
        fn run<T: Float + Send + Sync>(x: &[T], t: &[u32], g: &[T], v: usize) -> Vec<T> {
            let mut out = vec![T::zero(); x.len()];
            out.par_chunks_mut(v)
                .zip(x.par_chunks(v))
                .zip(t.par_iter().zip(g.par_iter()))
                .for_each(|((o, x), (&t, &g))| {
                    let lse = logsumexp(x);
                    for (o, &x) in o.iter_mut().zip(x) {
                        *o = g * (x - lse).exp();
                    }
                    o[t as usize] = o[t as usize] - g;
                });
            out
        }
        let out = float_op!(self.name(), s1, s3 => |x, g| run(slice(x, l1)?, t, slice(g, l3)?, v));
        Ok((out, l1.shape().clone()))
    }
}

/// A row-major matrix operand of a GEMM: its elements and strides.
struct Mat<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a, T> Mat<'a, T> {
    fn new(data: &'a [T], rows: usize, cols: usize) -> Mat<'a, T> {
        Mat {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The same elements read as the transpose.
    fn t(self) -> Mat<'a, T> {
        Mat {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride < self.data.len()
    }
}

/// `dst (m×n, row-major) = [dst +] s · lhs @ rhs` with gemm (what candle's
/// CPU matmul runs), on rayon's threads; `accumulate` adds to `dst`.
fn gemm_into<T: Float + 'static>(dst: &mut [T], lhs: &Mat<T>, rhs: &Mat<T>, s: T, accumulate: bool) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert!(
        rhs.rows == k && dst.len() == m * n && lhs.fits() && rhs.fits(),
        "gemm_into: shapes"
    );
    let threads = rayon::current_num_threads();
    let par = match threads > 1 {
        true => gemm::Parallelism::Rayon(threads),
        false => gemm::Parallelism::None,
    };
    // SAFETY: every operand's extent was checked against its slice above;
    // `dst` is exactly m×n and written through its own row stride n.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            if accumulate { T::one() } else { T::zero() },
            s,
            false,
            false,
            false,
            par,
        )
    }
}

/// The contiguous f32/f64 storage of a CPU tensor held by an op (a frozen
/// weight), read under its lock for the duration of `f`.
fn with_cpu_slice<R>(t: &Tensor, f: impl FnOnce(&CpuStorage, &Layout) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(s) => f(s, layout),
        _ => candle_core::bail!("fused op: a CPU tensor was expected"),
    }
}

/// `x @ w^T` for a frozen `w` (`(out, in)`, no gradient wanted), with a
/// gradient for `x` only: candle's matmul backward would also form `dw`, a
/// full `(out, in)` GEMM per projection that a LoRA step (and the tied head,
/// the largest matmul of a small model) then throws away. `x` is `(rows, in)`.
pub fn frozen_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if fused(&[x, w]) && x.rank() == 2 && w.rank() == 2 {
        return x.contiguous()?.apply_op2(&w.contiguous()?, FrozenMatmul);
    }
    x.matmul(&w.t()?)
}

struct FrozenMatmul;

impl CustomOp2 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "stepwise-frozen-matmul"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("{}: x has {k} columns, w {k2}", self.name())
        }
        fn run<T: Float + 'static>(x: &[T], w: &[T], rows: usize, n: usize, k: usize) -> Vec<T> {
            let mut out = vec![T::zero(); rows * n];
            gemm_into(&mut out, &Mat::new(x, rows, k), &Mat::new(w, n, k).t(), T::one(), false);
            out
        }
        let out = float_op!(self.name(), s1, s2 => |x, w| run(slice(x, l1)?, slice(w, l2)?, rows, n, k));
        Ok((out, Shape::from((rows, n))))
    }

    /// dx = g @ w; no gradient for `w`.
    fn bwd(&self, _x: &Tensor, w: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(g.matmul(w)?), None))
    }
}

/// A LoRA projection in one op each way: `x W^T + s (x A^T) B^T` for a
/// frozen `W` `(out, in)` and adapters `A` `(r, in)`, `B` `(out, r)`, with
/// gradients for `x`, `A` and `B` (none for `W`). The branch accumulates into
/// the base's output inside the GEMM, where the composed form makes three
/// more `(rows, out)` tensors forward and about as many backward per
/// projection. `x` is `(rows, in)`.
pub fn lora_linear(x: &Tensor, w: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> Result<Tensor> {
    if fused(&[x, w, a, b]) && x.rank() == 2 && w.rank() == 2 && a.rank() == 2 && b.rank() == 2 {
        let op = LoraLinear {
            w: w.contiguous()?,
            scale,
        };
        return x.contiguous()?.apply_op3(&a.contiguous()?, &b.contiguous()?, op);
    }
    frozen_matmul(x, w)? + (x.matmul(&a.t()?)?.matmul(&b.t()?)? * scale)?
}

struct LoraLinear {
    w: Tensor,
    scale: f64,
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "stepwise-lora-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, k) = l1.shape().dims2()?;
        let (r, k2) = l2.shape().dims2()?;
        let (n, r2) = l3.shape().dims2()?;
        let (n2, k3) = self.w.dims2()?;
        if k != k2 || k != k3 || r != r2 || n != n2 {
            candle_core::bail!("{}: x {rows}x{k}, A {r}x{k2}, B {n}x{r2}, W {n2}x{k3}", self.name())
        }
        fn run<T: Float + 'static>(
            x: &[T],
            a: &[T],
            b: &[T],
            w: &[T],
            d: (usize, usize, usize, usize),
            s: f64,
        ) -> Vec<T> {
            let (rows, k, r, n) = d;
            let mut out = vec![T::zero(); rows * n];
            let x = Mat::new(x, rows, k);
            gemm_into(&mut out, &x, &Mat::new(w, n, k).t(), T::one(), false);
            let mut h = vec![T::zero(); rows * r];
            gemm_into(&mut h, &x, &Mat::new(a, r, k).t(), T::one(), false);
            gemm_into(
                &mut out,
                &Mat::new(&h, rows, r),
                &Mat::new(b, n, r).t(),
                T::from(s).unwrap(),
                true,
            );
            out
        }
        let d = (rows, k, r, n);
        with_cpu_slice(&self.w, |sw, lw| {
            Ok(float_op!(self.name(), s1, s2, s3, sw => |x, a, b, w| run(slice(x, l1)?, slice(a, l2)?, slice(b, l3)?, slice(w, lw)?, d, self.scale)))
        })
        .map(|out| (out, Shape::from((rows, n))))
    }

    /// With `gB = g B` and `h = x A^T`: dx = g W + s·gB A, dA = s·gB^T x,
    /// dB = s·g^T h.
    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let gb = g.matmul(b)?;
        let h = x.matmul(&a.t()?)?;
        let da = (gb.t()?.matmul(x)? * self.scale)?;
        let db = (g.t()?.matmul(&h)? * self.scale)?;
        let dx = g.apply_op3_no_bwd(
            &gb,
            a,
            &LoraBwdX {
                w: self.w.clone(),
                scale: self.scale,
            },
        )?;
        Ok((Some(dx), Some(da), Some(db)))
    }
}

/// dx = g W + s · gB A, accumulated in one output.
struct LoraBwdX {
    w: Tensor,
    scale: f64,
}

impl CustomOp3 for LoraBwdX {
    fn name(&self) -> &'static str {
        "stepwise-lora-linear-bwd-x"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, n) = l1.shape().dims2()?;
        let (_, r) = l2.shape().dims2()?;
        let (_, k) = l3.shape().dims2()?;
        fn run<T: Float + 'static>(
            g: &[T],
            gb: &[T],
            a: &[T],
            w: &[T],
            d: (usize, usize, usize, usize),
            s: f64,
        ) -> Vec<T> {
            let (rows, n, r, k) = d;
            let mut dx = vec![T::zero(); rows * k];
            gemm_into(&mut dx, &Mat::new(g, rows, n), &Mat::new(w, n, k), T::one(), false);
            gemm_into(
                &mut dx,
                &Mat::new(gb, rows, r),
                &Mat::new(a, r, k),
                T::from(s).unwrap(),
                true,
            );
            dx
        }
        let d = (rows, n, r, k);
        with_cpu_slice(&self.w, |sw, lw| {
            Ok(float_op!(self.name(), s1, s2, s3, sw => |g, gb, a, w| run(slice(g, l1)?, slice(gb, l2)?, slice(a, l3)?, slice(w, lw)?, d, self.scale)))
        })
        .map(|out| (out, Shape::from((rows, k))))
    }
}
