//! AdamW with decoupled weight decay, global-norm clipping and a warm-up +
//! cosine schedule, with state that saves and restores exactly.
//!
//! `candle_nn::AdamW` has no clipping, accumulation, schedule or state save,
//! and builds several temporaries per parameter per step. This one keeps its
//! moments as plain host vectors and updates each parameter in one pass.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Result, StudentError};
use crate::params::ParamStore;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled (applied to the weights, not the gradient); not applied to
    /// norm weights and biases.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

/// Linear warm-up to `peak` over `warmup` steps, then cosine decay to
/// `peak * min_ratio` at `total`. Steps count from 1.
pub fn lr_at(step: u64, peak: f64, warmup: u64, total: u64, min_ratio: f64) -> f64 {
    if warmup > 0 && step <= warmup {
        return peak * step as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup.min(step)) as f64 / span).min(1.0);
    let min = peak * min_ratio;
    min + 0.5 * (peak - min) * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// Host-side gradients by parameter name, summed over micro-batches.
pub type Grads = BTreeMap<String, Vec<f32>>;

/// Adds the gradient of every parameter in `g` to `grads` (as f32, by
/// name): gradient accumulation over micro-batches happens on the host.
pub fn accumulate(grads: &mut Grads, params: &ParamStore, g: &candle_core::backprop::GradStore) -> Result<()> {
    for (name, var) in params.vars() {
        if let Some(gt) = g.get(var.as_tensor()) {
            let v: Vec<f32> = gt.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?;
            match grads.get_mut(name) {
                Some(acc) => acc.iter_mut().zip(v).for_each(|(a, b)| *a += b),
                None => {
                    grads.insert(name.clone(), v);
                }
            }
        }
    }
    Ok(())
}

/// Global L2 norm of all gradients.
pub fn global_norm(grads: &Grads) -> f64 {
    grads
        .values()
        .flat_map(|g| g.iter())
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt()
}

/// Scales gradients so their global norm is at most `max_norm`; returns the
/// norm before clipping.
pub fn clip_global_norm(grads: &mut Grads, max_norm: f64) -> f64 {
    let norm = global_norm(grads);
    if max_norm > 0.0 && norm > max_norm {
        let s = (max_norm / (norm + 1e-6)) as f32;
        grads.values_mut().flat_map(|g| g.iter_mut()).for_each(|x| *x *= s);
    }
    norm
}

pub struct AdamW {
    pub config: AdamWConfig,
    /// Updates applied so far (bias correction uses it).
    pub t: u64,
    m: BTreeMap<String, Vec<f32>>,
    v: BTreeMap<String, Vec<f32>>,
}

impl AdamW {
    pub fn new(config: AdamWConfig, params: &ParamStore) -> AdamW {
        let zeros: BTreeMap<String, Vec<f32>> = params
            .vars()
            .iter()
            .map(|(k, v)| (k.clone(), vec![0.0; v.elem_count()]))
            .collect();
        AdamW {
            config,
            t: 0,
            m: zeros.clone(),
            v: zeros,
        }
    }

    /// One update at learning rate `lr`. Parameters with no gradient are left
    /// alone (their moments do not decay), as in PyTorch.
    pub fn step(&mut self, params: &ParamStore, grads: &Grads, lr: f64) -> Result<()> {
        self.t += 1;
        let c = &self.config;
        let (b1, b2) = (c.beta1 as f32, c.beta2 as f32);
        let bc1 = 1.0 - c.beta1.powi(self.t as i32);
        let bc2 = 1.0 - c.beta2.powi(self.t as i32);
        let step_size = (lr / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let eps = c.eps as f32;
        for (name, var) in params.vars() {
            let Some(g) = grads.get(name) else { continue };
            let decay = if var.rank() >= 2 {
                (1.0 - lr * c.weight_decay) as f32
            } else {
                1.0
            };
            let mut p: Vec<f32> = var.as_tensor().flatten_all()?.to_vec1()?;
            let m = self.m.get_mut(name).expect("moments for every parameter");
            let v = self.v.get_mut(name).expect("moments for every parameter");
            // Element-wise, so splitting across threads changes no result.
            use rayon::prelude::*;
            const CHUNK: usize = 1 << 14;
            p.par_chunks_mut(CHUNK)
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .zip(g.par_chunks(CHUNK))
                .for_each(|(((p, m), v), g)| {
                    for i in 0..p.len() {
                        let gi = g[i];
                        m[i] = b1 * m[i] + (1.0 - b1) * gi;
                        v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                        p[i] = p[i] * decay - step_size * m[i] / (v[i].sqrt() / bc2_sqrt + eps);
                    }
                });
            let t = Tensor::from_vec(p, var.shape(), var.device())?;
            var.set(&t)?;
        }
        Ok(())
    }

    /// Moments as safetensors (`m.<name>`, `v.<name>`) plus the update count as tensor `t`.
    pub fn save(&self, path: &Path, params: &ParamStore) -> Result<()> {
        let dev = Device::Cpu;
        let mut map: HashMap<String, Tensor> = HashMap::new();
        for (name, var) in params.vars() {
            map.insert(
                format!("m.{name}"),
                Tensor::from_slice(&self.m[name], var.shape(), &dev)?,
            );
            map.insert(
                format!("v.{name}"),
                Tensor::from_slice(&self.v[name], var.shape(), &dev)?,
            );
        }
        map.insert("t".into(), Tensor::new(&[self.t as u32], &dev)?);
        candle_core::safetensors::save(&map, path)?;
        Ok(())
    }

    pub fn load(config: AdamWConfig, path: &Path, params: &ParamStore) -> Result<AdamW> {
        let mut map = candle_core::safetensors::load(path, &Device::Cpu)?;
        let bad = |msg: String| StudentError::Format {
            path: path.to_path_buf(),
            msg,
        };
        let t = map
            .remove("t")
            .ok_or_else(|| bad("optimizer step t is missing".into()))?
            .to_vec1::<u32>()?;
        let t_val = *t.first().ok_or_else(|| bad("optimizer step t is empty".into()))? as u64;
        let mut take = |key: String, n: usize| -> Result<Vec<f32>> {
            let t = map
                .remove(&key)
                .ok_or_else(|| bad(format!("optimizer state {key} is missing")))?;
            let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
            if v.len() != n {
                return Err(bad(format!(
                    "optimizer state {key} has {} values, the parameter {n}",
                    v.len()
                )));
            }
            Ok(v)
        };
        let mut m = BTreeMap::new();
        let mut v = BTreeMap::new();
        for (name, var) in params.vars() {
            m.insert(name.clone(), take(format!("m.{name}"), var.elem_count())?);
            v.insert(name.clone(), take(format!("v.{name}"), var.elem_count())?);
        }
        Ok(AdamW { config, t: t_val, m, v })
    }
}
