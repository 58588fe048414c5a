//! [`Plan::resolve`]: the config file, turned once into the libraries'
//! typed configs. Every command that works on a run directory (`run`,
//! `teach`, `train`, `eval`, `report`) goes through it, so they agree on
//! what a stage is and share its outputs.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::time::Duration;
use stepwise_datasets::adapters::{ColumnMapping, Format};
use stepwise_datasets::arith::ArithSpec;
use stepwise_datasets::digest::FileDigests;
use stepwise_datasets::source::{DataSpec, Probes, Source};
use stepwise_datasets::split::SplitSpec;
use stepwise_student::TrainConfig;
use stepwise_student::data::Curation;
use stepwise_student::lora::LoraConfig;
use stepwise_teacher::ClientConfig;
use stepwise_teacher::prompt::Prompts;
use stepwise_teacher::stage::{Price, TeachConfig};

use crate::config::{Arch, DataSource, EvalSection, LocalBackend, RunConfig, StudentInit, TeacherKind};
use crate::model_id::{ModelId, StudentId};
use crate::run_dir::RunDir;

/// A run, resolved.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The config as the user wrote it (what `stepwise.toml` in the run
    /// directory records).
    pub config: RunConfig,
    pub dir: RunDir,
    pub seed: u64,
    pub data: DataSpec,
    pub teacher: TeacherPlan,
    pub students: StudentsPlan,
    pub eval: EvalSection,
}

/// Requests in flight when the config does not say (a remote server's
/// rate limits are its own; a local gguf teacher's is its batch size).
pub const DEFAULT_CONCURRENCY: usize = 16;

/// Where the teacher runs.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// The built-in server, started on loopback for the stage.
    Local {
        backend: LocalBackend,
        gguf: Option<PathBuf>,
        /// Unset: chosen when the model is loaded (`stages::teach`).
        max_batch: Option<usize>,
        device: String,
    },
    /// Any OpenAI-compatible server.
    Http { base_url: String },
}

#[derive(Debug, Clone)]
pub struct TeacherPlan {
    pub endpoint: Endpoint,
    /// The teach stage's config; for a local teacher the URL is filled in
    /// when its server starts, and a gguf file's digest by [`Plan::teach_config`].
    pub teach: TeachConfig,
    /// Batch mode's settings; `None`: live requests.
    pub batch: Option<stepwise_teacher::batch::BatchConfig>,
}

/// How a from-scratch student is shaped.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub arch: Arch,
    pub hidden_size: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab_size: usize,
}

#[derive(Debug, Clone)]
pub enum Start {
    Scratch(Shape),
    Pretrained(PathBuf),
}

#[derive(Debug, Clone)]
pub struct StudentsPlan {
    pub start: Start,
    pub device: String,
    pub curation: Curation,
    /// LoRA adapters on the frozen pretrained start, or full training.
    pub lora: Option<LoraConfig>,
    pub train: TrainConfig,
    /// Every student to train, in the config's order (variants, then fractions).
    pub runs: Vec<StudentId>,
}

impl StudentsPlan {
    /// The student judged by the verdict: the distilled one on all the data
    /// if there is one, else the first trained on all of it, else the first.
    pub fn judged(&self) -> StudentId {
        let full: Vec<StudentId> = self.runs.iter().copied().filter(|s| s.permille == 1000).collect();
        full.iter()
            .copied()
            .find(|s| s.variant == stepwise_student::Variant::Distill)
            .or_else(|| full.first().copied())
            .unwrap_or(self.runs[0])
    }

    /// The base and every student, in evaluation order.
    pub fn models(&self) -> Vec<ModelId> {
        std::iter::once(ModelId::Base)
            .chain(self.runs.iter().map(|s| ModelId::Student(*s)))
            .collect()
    }
}

fn format_of(key: &str, format: Option<&str>, map: Option<&str>) -> Result<Format> {
    match (format, map) {
        (Some(f), None) => f
            .parse::<Format>()
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("data.{key}")),
        (None, Some(m)) => Ok(Format::Mapped(
            m.parse::<ColumnMapping>()
                .map_err(anyhow::Error::msg)
                .context("data.map")?,
        )),
        (Some(_), Some(_)) => bail!("data: give format or map for data.files, not both"),
        (None, None) => bail!("data: give either format or map for data.files"),
    }
}

impl Plan {
    /// Resolves `cfg` for the run directory `dir`. Reads nothing but the
    /// prompt templates (so an edited template is caught here, naming it).
    pub fn resolve(cfg: RunConfig, dir: RunDir) -> Result<Plan> {
        cfg.validate().map_err(anyhow::Error::msg)?;
        let seed = cfg.run.seed;
        let d = &cfg.data;
        let source = match d.source {
            DataSource::Arith => Source::Arith(ArithSpec {
                seed,
                in_distribution: d.examples,
                out_of_distribution: d.ood_examples,
                min_steps: d.min_steps,
                max_steps: d.max_steps,
                max_number: d.max_number,
            }),
            DataSource::Files => Source::Files {
                files: d.files.clone(),
                format: format_of("format", d.format.as_deref(), d.map.as_deref())?,
            },
        };
        let probes = if d.probe_files.is_empty() {
            None
        } else {
            let f = d
                .probe_format
                .as_deref()
                .context("data.probe_format: required with data.probe_files")?;
            Some(Probes {
                files: d.probe_files.clone(),
                format: format_of("probe_format", Some(f), None)?,
            })
        };
        let data = DataSpec {
            source,
            probes,
            split: SplitSpec {
                seed,
                val_fraction: d.val_fraction,
                test_fraction: d.test_fraction,
            },
            limit: d.limit,
        };

        let t = &cfg.teacher;
        // `base_url` first, then `base_urls`.
        let urls: Vec<String> = std::iter::once(&t.base_url)
            .filter(|u| !u.is_empty())
            .chain(&t.base_urls)
            .cloned()
            .collect();
        let (endpoint, model) = match t.kind {
            TeacherKind::Local => {
                let model = match (t.backend, &t.gguf) {
                    (LocalBackend::Gguf, Some(p)) => crate::gguf_teacher::served_name(p),
                    (b, _) => b.as_str().to_string(),
                };
                (
                    Endpoint::Local {
                        backend: t.backend,
                        gguf: t.gguf.clone(),
                        max_batch: t.max_batch,
                        device: t.device.clone(),
                    },
                    model,
                )
            }
            TeacherKind::Http => (
                Endpoint::Http {
                    base_url: urls[0].clone(),
                },
                t.model.clone(),
            ),
        };
        let prompts = Prompts::load(t.prompt_dir.as_deref(), t.prompt_style).with_context(|| {
            format!(
                "teacher.prompt_dir = {}",
                t.prompt_dir
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            )
        })?;
        let teach = TeachConfig {
            client: ClientConfig {
                base_url: urls.first().cloned().unwrap_or_default(),
                more_urls: urls.iter().skip(1).cloned().collect(),
                model,
                api_key_env: t.api_key_env.clone(),
                // A local gguf teacher's default comes with its batch size.
                concurrency: t.concurrency.unwrap_or(DEFAULT_CONCURRENCY),
                requests_per_minute: t.requests_per_minute,
                tokens_per_minute: t.tokens_per_minute,
                idle_timeout: Duration::from_secs_f64(t.idle_timeout_s),
                total_timeout: t.total_timeout_s.map(Duration::from_secs_f64),
                stream: t.stream,
                max_retries: t.max_retries,
                ..Default::default()
            },
            model_digest: None,
            temperature: t.temperature,
            max_tokens: t.max_tokens,
            n: t.n,
            seed: t.seed,
            prompts,
            rows_per_shard: t.rows_per_shard,
            price: Price {
                prompt_per_mtok: t.price_prompt,
                completion_per_mtok: t.price_completion,
            },
            budget_usd: t.budget_usd,
            rationalize: t.rationalize,
            keep_raw: t.keep_raw,
            reasoning_effort: t.reasoning_effort.map(|e| e.as_str().to_string()),
            top_logprobs: t.top_logprobs,
        };

        let s = &cfg.student;
        let start = match &s.init {
            StudentInit::Scratch => Start::Scratch(Shape {
                arch: s.arch,
                hidden_size: s.hidden_size,
                layers: s.layers,
                heads: s.heads,
                kv_heads: s.kv_heads,
                vocab_size: s.vocab_size,
            }),
            StudentInit::Pretrained(p) => Start::Pretrained(p.clone()),
        };
        let mut runs = Vec::new();
        for &v in &cfg.students.variants {
            for &f in &cfg.students.fractions {
                runs.push(StudentId::new(v, f));
            }
        }
        let students = StudentsPlan {
            start,
            device: s.device.clone(),
            curation: Curation {
                require_gold: t.require_gold,
                min_vote_share: t.min_vote_share,
                rationale_from: cfg.students.rationale_from,
            },
            lora: s.lora.clone(),
            train: cfg.train.clone(),
            runs,
        };
        Ok(Plan {
            seed,
            data,
            teacher: TeacherPlan {
                endpoint,
                teach,
                batch: (cfg.teacher.mode == crate::config::TeachMode::Batch).then(|| cfg.teacher.batch.config()),
            },
            students,
            eval: cfg.eval.clone(),
            dir,
            config: cfg,
        })
    }

    /// Whether the teach stage runs a GGUF model in this process (candle's
    /// quantized matmuls, which want its element-wise thread pool).
    pub fn runs_quantized_teacher(&self) -> bool {
        matches!(&self.teacher.endpoint, Endpoint::Local { gguf: Some(_), .. })
            && self.config.teacher.backend == LocalBackend::Gguf
    }

    /// The teach config with the identity of a local model file filled in.
    pub fn teach_config(&self, digests: &mut FileDigests) -> Result<TeachConfig> {
        let mut tc = self.teacher.teach.clone();
        if let Endpoint::Local { gguf: Some(p), .. } = &self.teacher.endpoint
            && self.config.teacher.backend == LocalBackend::Gguf
        {
            tc.model_digest = Some(digests.sha256(p).context("teacher.gguf")?);
        }
        Ok(tc)
    }

    /// The file digests remembered in the run directory.
    pub fn digests(&self) -> FileDigests {
        FileDigests::open(&self.dir.file_digests())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The presets and the commented default resolve, and the commented
    /// default is the embedded default.
    #[test]
    fn every_example_config_resolves_and_the_commented_one_is_the_default() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "toml") {
                let cfg = RunConfig::load(&p).unwrap_or_else(|e| panic!("{e:#}"));
                // Prompt directories are relative to the repository root.
                let root = dir.join("..");
                let mut cfg = cfg;
                if let Some(pd) = &cfg.teacher.prompt_dir {
                    cfg.teacher.prompt_dir = Some(root.join(pd));
                }
                Plan::resolve(cfg, RunDir::new("/nonexistent")).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
                n += 1;
            }
        }
        assert!(n >= 4, "{n} presets");
        let commented = RunConfig::load(&dir.join("stepwise.toml")).unwrap();
        assert_eq!(commented, RunConfig::default());
    }

    #[test]
    fn a_wrong_kind_names_the_allowed_values() {
        let e = toml::from_str::<RunConfig>("[student]\narch = \"gpt\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("gpt") && e.contains("`llama`") && e.contains("`t5`"), "{e}");
        let e = toml::from_str::<RunConfig>("[students]\nvariants = [\"distil\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("distill") && e.contains("label-gold"), "{e}");
    }
}
