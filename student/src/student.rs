//! A student on disk and in memory: an HF-style directory (`config.json`,
//! `model.safetensors`, `tokenizer.json`) that `transformers` can load.

use std::path::Path;

use candle_core::Device;

use crate::error::{Result, StudentError, io};
use crate::llama::{Config, Llama};
use crate::params::ParamStore;
use crate::tokenizer::StudentTokenizer;

pub struct Student {
    pub config: Config,
    pub params: ParamStore,
    pub model: Llama,
    pub tokenizer: StudentTokenizer,
}

impl Student {
    /// Fresh weights from `config` (normal, std 0.02), fixed by `seed`.
    pub fn from_scratch(
        mut config: Config,
        tokenizer: StudentTokenizer,
        seed: u64,
        device: &Device,
    ) -> Result<Student> {
        config.vocab_size = tokenizer.vocab_size();
        config.eos_token_id = Some(tokenizer.eos_id);
        config.pad_token_id = Some(tokenizer.pad_id);
        config.validate().map_err(StudentError::Config)?;
        let params = ParamStore::init(&config.parameter_shapes(), 0.02, seed, device)?;
        let model = Llama::new(&config, &params)?;
        Ok(Student {
            config,
            params,
            model,
            tokenizer,
        })
    }

    /// Loads an HF-style directory.
    pub fn load_dir(dir: &Path, device: &Device) -> Result<Student> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(io(&cfg_path))?;
        let config: Config = serde_json::from_str(&text).map_err(|e| StudentError::Format {
            path: cfg_path.clone(),
            msg: e.to_string(),
        })?;
        config.validate().map_err(|msg| StudentError::Format {
            path: cfg_path.clone(),
            msg,
        })?;
        let params = ParamStore::load(&dir.join("model.safetensors"), &config.parameter_shapes(), device)?;
        let tokenizer = StudentTokenizer::load(&dir.join("tokenizer.json"))?;
        let model = Llama::new(&config, &params)?;
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
        let model = Llama::new(&config, &params)?;
        Ok(Student {
            config,
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

    /// Writes the directory under a temporary name and renames it into place,
    /// so a reader never sees half a model.
    pub fn save_dir(&self, dir: &Path) -> Result<()> {
        write_dir_atomically(dir, |tmp| self.write_files(tmp))
    }

    /// The three files, into an existing directory.
    pub fn write_files(&self, dir: &Path) -> Result<()> {
        let cfg = serde_json::to_string_pretty(&self.config).expect("config serialises");
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

fn is_gguf(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// Fills a fresh `<dir>.tmp` with `fill`, then renames it over `dir` (an old
/// `dir` is removed first): a reader never sees a half-written directory.
pub(crate) fn write_dir_atomically(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = dir.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    fill(&tmp)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::rename(&tmp, dir).map_err(io(dir))
}
