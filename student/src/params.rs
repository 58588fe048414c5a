//! Named parameters (HF names), their initialisation, and safetensors I/O.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The trainable variables of a model, by Hugging Face tensor name. Kept
/// sorted so iteration order (and so optimizer state) is deterministic.
pub struct ParamStore {
    vars: BTreeMap<String, Var>,
    device: Device,
}

impl ParamStore {
    /// Fresh weights: normal(0, `std`) for matrices, ones for norm weights,
    /// zeros for biases, from a seeded generator (same seed, same model).
    pub fn init(shapes: &BTreeMap<String, Vec<usize>>, std: f64, seed: u64, device: &Device) -> Result<ParamStore> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut vars = BTreeMap::new();
        for (name, shape) in shapes {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = if name.ends_with(".bias") {
                vec![0.0; n]
            } else if shape.len() == 1 {
                vec![1.0; n]
            } else {
                (0..n).map(|_| (normal(&mut rng) * std) as f32).collect()
            };
            let t = Tensor::from_vec(data, shape.as_slice(), device)?;
            vars.insert(name.clone(), Var::from_tensor(&t)?);
        }
        Ok(ParamStore {
            vars,
            device: device.clone(),
        })
    }

    /// Takes tensors as they are (already named and shaped), as f32 variables.
    pub fn from_tensors(tensors: BTreeMap<String, Tensor>, device: &Device) -> Result<ParamStore> {
        let mut vars = BTreeMap::new();
        for (name, t) in tensors {
            let t = t.to_device(device)?.to_dtype(DType::F32)?;
            vars.insert(name, Var::from_tensor(&t)?);
        }
        Ok(ParamStore {
            vars,
            device: device.clone(),
        })
    }

    /// Loads a safetensors file, casting any float dtype to f32, and checks
    /// that exactly `shapes` are present with those shapes.
    pub fn load(path: &Path, shapes: &BTreeMap<String, Vec<usize>>, device: &Device) -> Result<ParamStore> {
        let mut loaded = candle_core::safetensors::load(path, device)?;
        let mut tensors = BTreeMap::new();
        for (name, shape) in shapes {
            let t = loaded
                .remove(name)
                .ok_or_else(|| candle_core::Error::msg(format!("{}: tensor {name} is missing", path.display())))?;
            if t.dims() != shape.as_slice() {
                candle_core::bail!(
                    "{}: tensor {name} has shape {:?}, expected {:?}",
                    path.display(),
                    t.dims(),
                    shape
                )
            }
            tensors.insert(name.clone(), t);
        }
        if let Some(extra) = loaded.keys().next() {
            candle_core::bail!(
                "{}: unexpected tensor {extra} (does config.json match?)",
                path.display()
            )
        }
        ParamStore::from_tensors(tensors, device)
    }

    /// A copy in another dtype (f64 for gradient checks).
    pub fn cast(&self, dtype: DType) -> Result<ParamStore> {
        let mut vars = BTreeMap::new();
        for (k, v) in &self.vars {
            vars.insert(k.clone(), Var::from_tensor(&v.as_tensor().to_dtype(dtype)?)?);
        }
        Ok(ParamStore {
            vars,
            device: self.device.clone(),
        })
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let map: HashMap<String, Tensor> = self
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        candle_core::safetensors::save(&map, path)
    }

    pub fn get(&self, name: &str) -> Result<Tensor> {
        self.vars
            .get(name)
            .map(|v| v.as_tensor().clone())
            .ok_or_else(|| candle_core::Error::msg(format!("no parameter named {name}")))
    }

    pub fn vars(&self) -> &BTreeMap<String, Var> {
        &self.vars
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The tensors a model of these `shapes` is built from, checked by name
    /// and shape (they share storage with the variables).
    pub fn tensors_for(&self, shapes: &BTreeMap<String, Vec<usize>>) -> Result<BTreeMap<String, Tensor>> {
        let mut p = BTreeMap::new();
        for (name, shape) in shapes {
            let t = self.get(name)?;
            if t.dims() != shape.as_slice() {
                candle_core::bail!("parameter {name}: shape {:?}, config expects {:?}", t.dims(), shape)
            }
            p.insert(name.clone(), t);
        }
        Ok(p)
    }

    /// [`Self::tensors_for`], detached: a frozen base whose tensors share
    /// storage but are not variables, so no gradient is formed for them.
    pub fn frozen_tensors_for(&self, shapes: &BTreeMap<String, Vec<usize>>) -> Result<BTreeMap<String, Tensor>> {
        Ok(self
            .tensors_for(shapes)?
            .into_iter()
            .map(|(k, t)| (k, t.detach()))
            .collect())
    }

    pub fn num_parameters(&self) -> usize {
        self.vars.values().map(|v| v.elem_count()).sum()
    }
}

/// Standard normal from two uniforms (Box-Muller); rand_distr is not worth a
/// dependency for one function.
pub(crate) fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

pub use crate::layers::Dropout;
