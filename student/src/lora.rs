//! LoRA adapters (Hu et al. 2021) on a frozen pretrained student, in PEFT's
//! layout so `peft.PeftModel.from_pretrained` loads what is saved here.
//!
//! A targeted projection computes `W x + (alpha / r) · B A dropout(x)` with
//! `A` `(r, in)` and `B` `(out, r)` trained and `W` frozen: the base's
//! tensors are detached (no gradient is formed for them, see
//! [`crate::ops::frozen_matmul`]), the optimizer holds state for `A` and `B`
//! only, and a checkpoint holds only them. [`Adapters::merge`] folds them
//! into the base for export.
//!
//! On disk (PEFT's names): `adapter_config.json` and
//! `adapter_model.safetensors` with `base_model.model.<module>.lora_A.weight`
//! and `.lora_B.weight`, where `<module>` is the HF module name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Result, StudentError, io};
use crate::layers::{Dropout, Linear, linear};
use crate::params::ParamStore;
use crate::student::ModelConfig;

/// A projection an adapter can sit on, by PEFT's module name (the last
/// component of the HF module path, as PEFT's `target_modules` matches).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Target {
    #[serde(rename = "q_proj")]
    QProj,
    #[serde(rename = "k_proj")]
    KProj,
    #[serde(rename = "v_proj")]
    VProj,
    #[serde(rename = "o_proj")]
    OProj,
    #[serde(rename = "gate_proj")]
    GateProj,
    #[serde(rename = "up_proj")]
    UpProj,
    #[serde(rename = "down_proj")]
    DownProj,
    #[serde(rename = "q")]
    Q,
    #[serde(rename = "k")]
    K,
    #[serde(rename = "v")]
    V,
    #[serde(rename = "o")]
    O,
    #[serde(rename = "wi")]
    Wi,
    #[serde(rename = "wi_0")]
    Wi0,
    #[serde(rename = "wi_1")]
    Wi1,
    #[serde(rename = "wo")]
    Wo,
}

impl Target {
    pub const ALL: [Target; 15] = [
        Target::QProj,
        Target::KProj,
        Target::VProj,
        Target::OProj,
        Target::GateProj,
        Target::UpProj,
        Target::DownProj,
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Wi,
        Target::Wi0,
        Target::Wi1,
        Target::Wo,
    ];

    /// The module name PEFT matches (`q_proj`, `wo`, ...).
    pub fn module(self) -> &'static str {
        match self {
            Target::QProj => "q_proj",
            Target::KProj => "k_proj",
            Target::VProj => "v_proj",
            Target::OProj => "o_proj",
            Target::GateProj => "gate_proj",
            Target::UpProj => "up_proj",
            Target::DownProj => "down_proj",
            Target::Q => "q",
            Target::K => "k",
            Target::V => "v",
            Target::O => "o",
            Target::Wi => "wi",
            Target::Wi0 => "wi_0",
            Target::Wi1 => "wi_1",
            Target::Wo => "wo",
        }
    }

    fn of_module(module: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.module() == module)
    }
}

/// `[student.lora]`: the adapters' shape. PEFT's defaults where it has one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    /// `r`: the adapters' inner dimension.
    pub rank: usize,
    /// `lora_alpha`: the branch is scaled by `alpha / rank`.
    pub alpha: f64,
    /// `lora_dropout`, on the branch's input while training.
    pub dropout: f32,
    /// The projections to adapt; empty: every projection of the blocks
    /// (PEFT's `all-linear`: not the embeddings or the output head).
    pub targets: Vec<Target>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: Vec::new(),
        }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(StudentError::Config(m));
        if self.rank == 0 {
            return bad("lora.rank must be at least 1".into());
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return bad(format!("lora.alpha must be positive, not {}", self.alpha));
        }
        if !(0.0..1.0).contains(&(self.dropout as f64)) {
            return bad(format!("lora.dropout must be in [0, 1), not {}", self.dropout));
        }
        Ok(())
    }

    /// The adapted modules of a model of `model` with their `(out, in)`
    /// shapes, by HF module name; an error names a target the model lacks.
    pub fn modules(&self, model: &ModelConfig) -> Result<BTreeMap<String, (usize, usize)>> {
        self.validate()?;
        let mut found = BTreeMap::new();
        let mut seen = std::collections::BTreeSet::new();
        let shapes = model.parameter_shapes();
        for (name, shape) in &shapes {
            let Some(module) = name.strip_suffix(".weight") else {
                continue;
            };
            let Some(target) = module.rsplit('.').next().and_then(Target::of_module) else {
                continue;
            };
            if shape.len() != 2 || !(self.targets.is_empty() || self.targets.contains(&target)) {
                continue;
            }
            seen.insert(target);
            found.insert(module.to_string(), (shape[0], shape[1]));
        }
        if let Some(missing) = self.targets.iter().find(|t| !seen.contains(t)) {
            let has: Vec<&str> = Target::ALL
                .iter()
                .filter(|t| shapes.keys().any(|n| n.ends_with(&format!(".{}.weight", t.module()))))
                .map(|t| t.module())
                .collect();
            return Err(StudentError::Config(format!(
                "lora.targets: {:?} is not a projection of this {} model (it has {})",
                missing.module(),
                model.kind(),
                has.join(", ")
            )));
        }
        Ok(found)
    }

    /// The targets as written to `adapter_config.json`: explicit module names.
    fn target_modules(&self, model: &ModelConfig) -> Result<Vec<String>> {
        let mut t: Vec<String> = self
            .modules(model)?
            .keys()
            .filter_map(|m| m.rsplit('.').next().map(str::to_string))
            .collect();
        t.sort();
        t.dedup();
        Ok(t)
    }
}

/// One projection's adapter, as the model holds it: `A` and `B` share
/// storage with the adapters' variables, so optimizer updates are seen.
pub struct LoraBranch {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    pub dropout: f32,
}

impl LoraBranch {
    /// `scale · (dropout(x) A^T) B^T`.
    pub fn forward(&self, x: &Tensor, dropout: Option<&mut Dropout>) -> candle_core::Result<Tensor> {
        let x = match dropout {
            Some(d) if self.dropout > 0.0 => d.apply_rate(x, self.dropout)?,
            _ => x.clone(),
        };
        let h = linear(&x, &self.a, None)?;
        linear(&h, &self.b, None)? * self.scale
    }
}

const PEFT_PREFIX: &str = "base_model.model.";
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// A student's adapters: their config, their trainable variables (named
/// `<module>.lora_A.weight` / `.lora_B.weight`) and the base they adapt.
pub struct Adapters {
    pub config: LoraConfig,
    pub params: ParamStore,
    /// Where the base model was loaded from (`base_model_name_or_path`).
    pub base: PathBuf,
}

fn a_name(module: &str) -> String {
    format!("{module}.lora_A.weight")
}
fn b_name(module: &str) -> String {
    format!("{module}.lora_B.weight")
}

/// Every adapter tensor's name and shape for `modules`.
fn shapes(modules: &BTreeMap<String, (usize, usize)>, rank: usize) -> BTreeMap<String, Vec<usize>> {
    let mut s = BTreeMap::new();
    for (m, &(out, inp)) in modules {
        s.insert(a_name(m), vec![rank, inp]);
        s.insert(b_name(m), vec![out, rank]);
    }
    s
}

impl Adapters {
    /// Fresh adapters as PEFT initialises them: `A` uniform in
    /// ±1/sqrt(in) (Kaiming-uniform with a = sqrt(5)), `B` zero, so the
    /// adapted model starts equal to its base. Seeded.
    pub fn init(model: &ModelConfig, config: &LoraConfig, base: &Path, seed: u64, device: &Device) -> Result<Adapters> {
        let modules = config.modules(model)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x10CA);
        let mut tensors = BTreeMap::new();
        for (m, &(out, inp)) in &modules {
            let bound = 1.0 / (inp as f32).sqrt();
            let a: Vec<f32> = (0..config.rank * inp)
                .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * bound)
                .collect();
            tensors.insert(a_name(m), Tensor::from_vec(a, (config.rank, inp), device)?);
            tensors.insert(
                b_name(m),
                Tensor::zeros((out, config.rank), candle_core::DType::F32, device)?,
            );
        }
        Ok(Adapters {
            config: config.clone(),
            params: ParamStore::from_tensors(tensors, device)?,
            base: base.to_path_buf(),
        })
    }

    /// Sets the branch of every adapted projection among `linears`; every
    /// adapter must find its projection.
    pub fn attach<'a>(&self, linears: impl IntoIterator<Item = &'a mut Linear>) -> Result<()> {
        let mut attached = 0;
        for l in linears {
            let (Ok(a), Ok(b)) = (self.params.get(&a_name(&l.name)), self.params.get(&b_name(&l.name))) else {
                continue;
            };
            l.lora = Some(LoraBranch {
                a,
                b,
                scale: self.config.scale(),
                dropout: self.config.dropout,
            });
            attached += 1;
        }
        let expected = self.params.vars().len() / 2;
        if attached != expected {
            return Err(StudentError::Config(format!(
                "{attached} of {expected} adapters found their projection"
            )));
        }
        Ok(())
    }

    /// The base's tensors with every adapter folded in: `W + scale · B A`.
    pub fn merge(&self, base: &ParamStore) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        let scale = self.config.scale();
        for (name, var) in base.vars() {
            let w = var.as_tensor().detach();
            let module = name.strip_suffix(".weight").unwrap_or(name);
            let merged = match (self.params.get(&a_name(module)), self.params.get(&b_name(module))) {
                (Ok(a), Ok(b)) => (&w + (b.matmul(&a)? * scale)?)?,
                _ => w.copy()?,
            };
            out.insert(name.clone(), merged);
        }
        Ok(out)
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir`.
    pub fn save(&self, dir: &Path, model: &ModelConfig) -> Result<()> {
        let task_type = match model {
            ModelConfig::Llama(_) => "CAUSAL_LM",
            ModelConfig::T5(_) => "SEQ_2_SEQ_LM",
        };
        let cfg = serde_json::json!({
            "peft_type": "LORA",
            "task_type": task_type,
            "base_model_name_or_path": self.base.to_string_lossy(),
            "r": self.config.rank,
            "lora_alpha": self.config.alpha,
            "lora_dropout": self.config.dropout,
            "target_modules": self.config.target_modules(model)?,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "use_rslora": false,
            "use_dora": false,
            "modules_to_save": null,
            "layers_to_transform": null,
            "rank_pattern": {},
            "alpha_pattern": {},
        });
        let p = dir.join(ADAPTER_CONFIG);
        std::fs::write(&p, serde_json::to_string_pretty(&cfg).expect("json")).map_err(io(&p))?;
        let map: std::collections::HashMap<String, Tensor> = self
            .params
            .vars()
            .iter()
            .map(|(k, v)| (format!("{PEFT_PREFIX}{k}"), v.as_tensor().clone()))
            .collect();
        candle_core::safetensors::save(&map, dir.join(ADAPTER_WEIGHTS))?;
        Ok(())
    }

    /// Reads a PEFT LoRA directory for a base of shape `model`; errors name
    /// the file and the key.
    pub fn load(dir: &Path, model: &ModelConfig, device: &Device) -> Result<Adapters> {
        let p = dir.join(ADAPTER_CONFIG);
        let text = std::fs::read_to_string(&p).map_err(io(&p))?;
        let bad = |msg: String| StudentError::Format { path: p.clone(), msg };
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let get = |k: &str| v.get(k).filter(|x| !x.is_null());
        if get("peft_type").and_then(|t| t.as_str()) != Some("LORA") {
            return Err(bad("peft_type: only LORA adapters are supported".into()));
        }
        for flag in ["use_dora", "use_rslora", "fan_in_fan_out"] {
            if get(flag).and_then(|x| x.as_bool()) == Some(true) {
                return Err(bad(format!("{flag}: true is not supported")));
            }
        }
        if get("bias").and_then(|x| x.as_str()).is_some_and(|b| b != "none") {
            return Err(bad("bias: only \"none\" is supported".into()));
        }
        let rank = get("r")
            .and_then(|x| x.as_u64())
            .ok_or_else(|| bad("r is missing".into()))? as usize;
        let alpha = get("lora_alpha").and_then(|x| x.as_f64()).unwrap_or(8.0);
        let dropout = get("lora_dropout").and_then(|x| x.as_f64()).unwrap_or(0.0) as f32;
        let targets = match get("target_modules") {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|t| {
                    let s = t.as_str().unwrap_or_default();
                    Target::of_module(s)
                        .ok_or_else(|| bad(format!("target_modules: {s:?} is not a projection stepwise adapts")))
                })
                .collect::<Result<Vec<_>>>()?,
            _ => return Err(bad("target_modules: expected a list of module names".into())),
        };
        let config = LoraConfig {
            rank,
            alpha,
            dropout,
            targets,
        };
        let modules = config.modules(model).map_err(|e| bad(e.to_string()))?;
        let wp = dir.join(ADAPTER_WEIGHTS);
        let mut loaded = candle_core::safetensors::load(&wp, device)?;
        let mut tensors = BTreeMap::new();
        for (name, shape) in shapes(&modules, rank) {
            let key = format!("{PEFT_PREFIX}{name}");
            let t = loaded.remove(&key).ok_or_else(|| StudentError::Format {
                path: wp.clone(),
                msg: format!("tensor {key} is missing"),
            })?;
            if t.dims() != shape.as_slice() {
                return Err(StudentError::Format {
                    path: wp.clone(),
                    msg: format!("tensor {key} has shape {:?}, expected {shape:?}", t.dims()),
                });
            }
            tensors.insert(name, t);
        }
        if let Some(extra) = loaded.keys().next() {
            return Err(StudentError::Format {
                path: wp.clone(),
                msg: format!("unexpected tensor {extra} (does adapter_config.json's target_modules match?)"),
            });
        }
        let base = get("base_model_name_or_path")
            .and_then(|x| x.as_str())
            .map(PathBuf::from)
            .ok_or_else(|| bad("base_model_name_or_path is missing".into()))?;
        Ok(Adapters {
            config,
            params: ParamStore::from_tensors(tensors, device)?,
            base,
        })
    }

    /// Loads the adapter weights of a checkpoint into these variables.
    pub fn set_from_dir(&self, dir: &Path, model: &ModelConfig) -> Result<()> {
        let loaded = Adapters::load(dir, model, self.params.device())?;
        for (name, var) in self.params.vars() {
            var.set(&loaded.params.get(name)?)?;
        }
        Ok(())
    }
}
