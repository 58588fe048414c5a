//! Helpers shared by the student's tests: finite differences for the
//! gradient tests, the toy task for the trainer tests ([`toy`]).
#![allow(dead_code)]

pub mod toy;

use candle_core::{Device, Result, Tensor, Var};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn rand_tensor(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

pub fn var(shape: &[usize], seed: u64) -> Var {
    Var::from_tensor(&rand_tensor(shape, seed)).unwrap()
}

/// Checks d f / d v at `samples` entries of each var by central differences.
/// Returns the largest relative error seen.
pub fn check(vars: &[(&str, &Var)], f: &dyn Fn() -> Result<Tensor>, samples: usize) -> f64 {
    check_where(vars, f, samples, false)
}

/// [`check`], sampling only entries whose gradient is not exactly zero when
/// `nonzero_only` (an embedding row no input uses has none, rightly).
pub fn check_where(vars: &[(&str, &Var)], f: &dyn Fn() -> Result<Tensor>, samples: usize, nonzero_only: bool) -> f64 {
    let loss = f().unwrap();
    let grads = loss.backward().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut worst: f64 = 0.0;
    for (name, v) in vars {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        let g: Vec<f64> = g.flatten_all().unwrap().to_vec1().unwrap();
        let base: Vec<f64> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        for _ in 0..samples {
            let i = loop {
                let i = rng.random_range(0..base.len());
                if !nonzero_only || g[i] != 0.0 {
                    break i;
                }
            };
            let h = 1e-5;
            let eval = |delta: f64| {
                let mut p = base.clone();
                p[i] += delta;
                v.set(&Tensor::from_vec(p, v.shape(), &Device::Cpu).unwrap()).unwrap();
                f().unwrap().to_scalar::<f64>().unwrap()
            };
            let numeric = (eval(h) - eval(-h)) / (2.0 * h);
            v.set(&Tensor::from_vec(base.clone(), v.shape(), &Device::Cpu).unwrap())
                .unwrap();
            let err = (g[i] - numeric).abs() / (g[i].abs() + numeric.abs()).max(1e-7);
            assert!(
                err < 1e-3,
                "{name}[{i}]: autograd {} against finite differences {numeric} (rel err {err:.2e})",
                g[i]
            );
            worst = worst.max(err);
        }
    }
    worst
}

/// Names of the vars whose gradient of `f` is missing or all zero.
pub fn without_gradient(vars: &[(&str, &Var)], f: &dyn Fn() -> Result<Tensor>) -> Vec<String> {
    let grads = f().unwrap().backward().unwrap();
    vars.iter()
        .filter(|(_, v)| {
            !grads
                .get(v.as_tensor())
                .map(|g| g.abs().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap() > 0.0)
                .unwrap_or(false)
        })
        .map(|(name, _)| name.to_string())
        .collect()
}
