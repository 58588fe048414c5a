//! A student on disk and in memory: an HF-style directory (`config.json`,
//! `model.safetensors`, `tokenizer.json`) that `transformers` can load.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Device;

use crate::error::{Result, StudentError, io};
use crate::llama::{Config, Llama};
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
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let cfg = match v.get("model_type").and_then(|t| t.as_str()) {
            Some("t5") => ModelConfig::T5(serde_json::from_value(v).map_err(|e| e.to_string())?),
            _ => ModelConfig::Llama(serde_json::from_value(v).map_err(|e| e.to_string())?),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn build(&self, params: &ParamStore) -> Result<Model> {
        Ok(match self {
            ModelConfig::Llama(c) => Model::Llama(Llama::new(c, params)?),
            ModelConfig::T5(c) => Model::T5(T5::new(c, params)?),
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
    pub params: ParamStore,
    pub model: Model,
    pub tokenizer: StudentTokenizer,
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
        let model = config.build(&params)?;
        Ok(Student {
            config,
            params,
            model,
            tokenizer,
        })
    }

    /// Loads an HF-style directory.
    pub fn load_dir(dir: &Path, device: &Device) -> Result<Student> {
        let config = read_config(dir)?;
        let params = ParamStore::load(&dir.join("model.safetensors"), &config.parameter_shapes(), device)?;
        let tokenizer = StudentTokenizer::load(&dir.join("tokenizer.json"))?;
        let model = config.build(&params)?;
        Ok(Student {
            config,
            params,
            model,
            tokenizer,
        })
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

    /// The three files, into an existing directory.
    pub fn write_files(&self, dir: &Path) -> Result<()> {
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
}

/// A model directory's `config.json`; errors name the file.
fn read_config(dir: &Path) -> Result<ModelConfig> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    ModelConfig::from_json(&text).map_err(|msg| StudentError::Format { path, msg })
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
