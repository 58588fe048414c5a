//! A student on disk and in memory: an HF-style directory (`config.json`,
//! `model.safetensors`, `tokenizer.json`) that `transformers` can load.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Device;

use crate::error::{Result, StudentError, io};
use crate::llama::{Config, Llama};
use crate::lora::{ADAPTER_CONFIG, Adapters};
use crate::params::ParamStore;
use crate::t5::{T5, T5Config};
use crate::tokenizer::StudentTokenizer;

/// A student's shape: decoder-only (Llama / Qwen2) or encoder-decoder (T5),
/// told apart in `config.json` by `model_type`, as HF does.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    Llama(Config),
    T5(T5Config),
}

impl ModelConfig {
    pub fn parameter_shapes(&self) -> BTreeMap<String, Vec<usize>> {
        match self {
            ModelConfig::Llama(c) => c.parameter_shapes(),
            ModelConfig::T5(c) => c.parameter_shapes(),
        }
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        match self {
            ModelConfig::Llama(c) => c.validate(),
            ModelConfig::T5(c) => c.validate(),
        }
    }

    /// `llama`, `qwen2` or `t5`, as `config.json`'s `model_type` says.
    pub fn kind(&self) -> &str {
        match self {
            ModelConfig::Llama(c) => &c.model_type,
            ModelConfig::T5(c) => &c.model_type,
        }
    }

    /// The decoder-only config, if this is one.
    pub fn llama(&self) -> Option<&Config> {
        match self {
            ModelConfig::Llama(c) => Some(c),
            ModelConfig::T5(_) => None,
        }
    }

    /// Sets the vocabulary and special ids from the tokenizer.
    pub fn adopt(&mut self, tok: &StudentTokenizer) {
        match self {
            ModelConfig::Llama(c) => {
                c.vocab_size = tok.vocab_size();
                c.eos_token_id = Some(tok.eos_id);
                c.pad_token_id = Some(tok.pad_id);
            }
            ModelConfig::T5(c) => {
                c.vocab_size = tok.vocab_size();
                c.eos_token_id = tok.eos_id;
                c.pad_token_id = tok.pad_id;
                c.decoder_start_token_id = tok.pad_id;
            }
        }
    }

    pub fn to_json(&self) -> String {
        match self {
            ModelConfig::Llama(c) => serde_json::to_string_pretty(c),
            ModelConfig::T5(c) => serde_json::to_string_pretty(c),
        }
        .expect("config serialises")
    }

    pub fn from_json(text: &str) -> std::result::Result<ModelConfig, String> {
        let mut v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        upgrade_transformers5(&mut v);
        let cfg = match v.get("model_type").and_then(|t| t.as_str()) {
            Some("t5") => ModelConfig::T5(serde_json::from_value(v).map_err(|e| e.to_string())?),
            _ => ModelConfig::Llama(serde_json::from_value(v).map_err(|e| e.to_string())?),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The model over `params`, all trained, or frozen under `adapters`.
    fn build(&self, params: &ParamStore, adapters: Option<&Adapters>) -> Result<Model> {
        Ok(match (self, adapters) {
            (ModelConfig::Llama(c), None) => Model::Llama(Llama::new(c, params)?),
            (ModelConfig::T5(c), None) => Model::T5(T5::new(c, params)?),
            (ModelConfig::Llama(c), Some(a)) => Model::Llama(Llama::with_adapters(c, params, a)?),
            (ModelConfig::T5(c), Some(a)) => Model::T5(T5::with_adapters(c, params, a)?),
        })
    }
}

/// The model itself, built over the student's parameters.
pub enum Model {
    Llama(Llama),
    T5(T5),
}

impl Model {
    /// The decoder-only model, if this is one.
    pub fn llama(&self) -> Option<&Llama> {
        match self {
            Model::Llama(m) => Some(m),
            Model::T5(_) => None,
        }
    }
}

pub struct Student {
    pub config: ModelConfig,
    /// The model's weights: all of them trained, or with `adapters`, the
    /// frozen base.
    pub params: ParamStore,
    pub model: Model,
    pub tokenizer: StudentTokenizer,
    /// LoRA adapters on the frozen `params`, when the student has them.
    pub adapters: Option<Adapters>,
}

impl Student {
    /// Fresh weights from `config` (normal, std 0.02), fixed by `seed`.
    pub fn from_scratch(
        config: impl Into<ModelConfig>,
        tokenizer: StudentTokenizer,
        seed: u64,
        device: &Device,
    ) -> Result<Student> {
        let mut config = config.into();
        config.adopt(&tokenizer);
        config.validate().map_err(StudentError::Config)?;
        let params = ParamStore::init(&config.parameter_shapes(), 0.02, seed, device)?;
        let model = config.build(&params, None)?;
        Ok(Student {
            config,
            params,
            model,
            tokenizer,
            adapters: None,
        })
    }

    /// This student with fresh LoRA adapters (PEFT's initialisation, seeded)
    /// on its weights, which are frozen from now on. `base` is where the
    /// weights were loaded from, recorded as the adapters' base model.
    pub fn with_lora(self, lora: &crate::lora::LoraConfig, base: &Path, seed: u64) -> Result<Student> {
        let adapters = Adapters::init(&self.config, lora, base, seed, self.params.device())?;
        self.with_adapters(adapters)
    }

    /// This student with `adapters` on its (now frozen) weights.
    pub fn with_adapters(self, adapters: Adapters) -> Result<Student> {
        let model = self.config.build(&self.params, Some(&adapters))?;
        Ok(Student {
            model,
            adapters: Some(adapters),
            ..self
        })
    }

    /// What the optimizer updates: the adapters, or every weight.
    pub fn trainable(&self) -> &ParamStore {
        match &self.adapters {
            Some(a) => &a.params,
            None => &self.params,
        }
    }

    /// The same model with its adapters folded into the weights (`W + s·BA`):
    /// a plain student to export. A student without adapters is copied.
    pub fn merged(&self) -> Result<Student> {
        let tensors = match &self.adapters {
            Some(a) => a.merge(&self.params)?,
            None => self
                .params
                .vars()
                .iter()
                .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
                .collect::<Result<_>>()?,
        };
        let params = ParamStore::from_tensors(tensors, self.params.device())?;
        let model = self.config.build(&params, None)?;
        Ok(Student {
            config: self.config.clone(),
            params,
            model,
            tokenizer: self.tokenizer.clone(),
            adapters: None,
        })
    }

    /// Loads an HF-style directory, or a PEFT adapter directory
    /// (`adapter_config.json`) over the base it names.
    pub fn load_dir(dir: &Path, device: &Device) -> Result<Student> {
        if dir.join(ADAPTER_CONFIG).exists() {
            return Student::load_adapter_dir(dir, device);
        }
        let config = read_config(dir)?;
        let params = ParamStore::load(&dir.join("model.safetensors"), &config.parameter_shapes(), device)?;
        let tokenizer = StudentTokenizer::load(&dir.join("tokenizer.json"))?;
        let model = config.build(&params, None)?;
        Ok(Student {
            config,
            params,
            model,
            tokenizer,
            adapters: None,
        })
    }

    /// A PEFT LoRA directory: the base it names (a directory or a `.gguf`),
    /// with the adapters on it. The directory's own tokenizer wins.
    fn load_adapter_dir(dir: &Path, device: &Device) -> Result<Student> {
        let base_path = adapter_base(dir)?;
        let base = Student::load(&base_path, device)?;
        let adapters = Adapters::load(dir, &base.config, device)?;
        let tok = dir.join("tokenizer.json");
        let mut s = base.with_adapters(adapters)?;
        if tok.exists() {
            s.tokenizer = StudentTokenizer::load(&tok)?;
        }
        Ok(s)
    }

    /// A pretrained model from a GGUF file, dequantised to f32, with the
    /// tokenizer and chat template rebuilt from its metadata.
    pub fn from_gguf(path: &Path, device: &Device) -> Result<Student> {
        let file = crate::gguf::GgufFile::open(path)?;
        let config = file.config()?;
        let tokenizer = file.tokenizer()?;
        let params = file.params(&config, device)?;
        let model = Model::Llama(Llama::new(&config, &params)?);
        Ok(Student {
            config: ModelConfig::Llama(config),
            params,
            model,
            tokenizer,
            adapters: None,
        })
    }

    /// A student from a directory (`config.json`, ...) or a `.gguf` file.
    pub fn load(path: &Path, device: &Device) -> Result<Student> {
        if is_gguf(path) {
            Student::from_gguf(path, device)
        } else {
            Student::load_dir(path, device)
        }
    }

    /// The tokenizer alone of what [`Student::load`] would load.
    pub fn load_tokenizer(path: &Path) -> Result<StudentTokenizer> {
        if is_gguf(path) {
            crate::gguf::GgufFile::open(path)?.tokenizer()
        } else {
            StudentTokenizer::load(&path.join("tokenizer.json"))
        }
    }

    /// What [`Student::load`] would load, checked in a fraction of the time
    /// (the config and tokenizer, not the weights): a wrong `init` fails
    /// before any work starts, naming the file.
    pub fn inspect(path: &Path) -> Result<ModelConfig> {
        if is_gguf(path) {
            let file = crate::gguf::GgufFile::open(path)?;
            let config = file.config()?;
            file.tokenizer()?;
            return Ok(ModelConfig::Llama(config));
        }
        if !path.is_dir() {
            return Err(StudentError::Format {
                path: path.to_path_buf(),
                msg: "not a directory with config.json, model.safetensors and tokenizer.json, nor a .gguf file".into(),
            });
        }
        if path.join(ADAPTER_CONFIG).exists() {
            let config = Student::inspect(&adapter_base(path)?)?;
            let p = path.join(crate::lora::ADAPTER_WEIGHTS);
            std::fs::metadata(&p).map_err(io(&p))?;
            return Ok(config);
        }
        let config = read_config(path)?;
        let weights = path.join("model.safetensors");
        std::fs::metadata(&weights).map_err(io(&weights))?;
        StudentTokenizer::load(&path.join("tokenizer.json"))?;
        Ok(config)
    }

    /// Writes the directory under a temporary name and swaps it into place
    /// (see `stepwise_datasets::atomic::replace_dir`), so a reader never sees
    /// half a model and a kill leaves the previous one.
    pub fn save_dir(&self, dir: &Path) -> Result<()> {
        write_dir_atomically(dir, |tmp| self.write_files(tmp))
    }

    /// The three files, into an existing directory; for a student with
    /// adapters, the PEFT adapter files and the tokenizer (the base is not
    /// copied: `adapter_config.json` names it).
    pub fn write_files(&self, dir: &Path) -> Result<()> {
        if let Some(a) = &self.adapters {
            a.save(dir, &self.config)?;
            return self.tokenizer.save(&dir.join("tokenizer.json"));
        }
        let cfg = self.config.to_json();
        let p = dir.join("config.json");
        std::fs::write(&p, cfg).map_err(io(&p))?;
        self.params.save(&dir.join("model.safetensors"))?;
        self.tokenizer.save(&dir.join("tokenizer.json"))
    }

    /// Copies weights from another parameter set of the same shapes.
    pub fn set_params_from(&self, other: &ParamStore) -> Result<()> {
        for (name, var) in self.params.vars() {
            var.set(&other.get(name)?)?;
        }
        Ok(())
    }

    /// Sets the trainable weights from a directory this student's
    /// [`Self::write_files`] wrote (a checkpoint): the adapters, or all weights.
    pub fn set_trainable_from(&self, dir: &Path) -> Result<()> {
        match &self.adapters {
            Some(a) => a.set_from_dir(dir, &self.config),
            None => {
                let loaded = ParamStore::load(
                    &dir.join("model.safetensors"),
                    &self.config.parameter_shapes(),
                    self.params.device(),
                )?;
                self.set_params_from(&loaded)
            }
        }
    }
}

/// Reads what transformers 5 writes as its earlier form: rope theta moved
/// into `rope_parameters`, and an untied T5 head became
/// `tie_word_embeddings: true` with `scale_decoder_outputs: false` (and an
/// `lm_head.weight` tensor).
fn upgrade_transformers5(v: &mut serde_json::Value) {
    let Some(o) = v.as_object_mut() else { return };
    if !o.contains_key("rope_theta")
        && let Some(theta) = o.get("rope_parameters").and_then(|r| r.get("rope_theta")).cloned()
    {
        o.insert("rope_theta".into(), theta);
    }
    if o.get("scale_decoder_outputs").and_then(|x| x.as_bool()) == Some(false) {
        o.insert("tie_word_embeddings".into(), serde_json::Value::Bool(false));
    }
}

/// A model directory's `config.json`; errors name the file.
fn read_config(dir: &Path) -> Result<ModelConfig> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    ModelConfig::from_json(&text).map_err(|msg| StudentError::Format { path, msg })
}

/// The base an adapter directory names (`base_model_name_or_path`;
/// relative to the directory when relative).
fn adapter_base(dir: &Path) -> Result<std::path::PathBuf> {
    let p = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&p).map_err(io(&p))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| StudentError::Format {
        path: p.clone(),
        msg: e.to_string(),
    })?;
    match v.get("base_model_name_or_path").and_then(|b| b.as_str()) {
        Some(b) => Ok(dir.join(b)),
        None => Err(StudentError::Format {
            path: p,
            msg: "base_model_name_or_path is missing".into(),
        }),
    }
}

fn is_gguf(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

impl From<Config> for ModelConfig {
    fn from(c: Config) -> ModelConfig {
        ModelConfig::Llama(c)
    }
}

impl From<T5Config> for ModelConfig {
    fn from(c: T5Config) -> ModelConfig {
        ModelConfig::T5(c)
    }
}

/// Fills a fresh `<dir>.tmp` with `fill`, then renames it over `dir` (an old
/// `dir` is removed first): a reader never sees a half-written directory.
pub(crate) fn write_dir_atomically(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    stepwise_datasets::atomic::replace_dir(dir, fill)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transformers5_config_keeps_its_rope_theta_and_untied_t5_head() {
        let llama = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,"head_dim":4,
            "rope_parameters":{"rope_theta":100000.0,"rope_type":"default"}}"#;
        let ModelConfig::Llama(c) = ModelConfig::from_json(llama).unwrap() else {
            panic!("llama")
        };
        assert_eq!(c.rope_theta, 100000.0);
        let t5 = r#"{"model_type":"t5","vocab_size":10,"d_model":8,"d_kv":4,"d_ff":16,"num_layers":1,
            "num_heads":2,"tie_word_embeddings":true,"scale_decoder_outputs":false}"#;
        let ModelConfig::T5(c) = ModelConfig::from_json(t5).unwrap() else {
            panic!("t5")
        };
        assert!(!c.tie_word_embeddings, "an untied head is read as untied");
    }
}
