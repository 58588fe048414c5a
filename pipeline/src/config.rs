//! `stepwise.toml`: one file describes a whole run. Every section has
//! defaults, so an empty file (or no file) is the embedded default: the
//! built-in arithmetic task, the local solver teacher, a small from-scratch
//! student.
//!
//! This is the file format as users write it; every kind is an enum, so a
//! wrong value is rejected with the allowed ones. [`crate::plan::Plan`]
//! turns it, once, into the libraries' typed configs.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use stepwise_student::TrainConfig;
use stepwise_student::data::{RationaleSource, Variant};
use stepwise_student::lora::LoraConfig;
use stepwise_teacher::prompt::PromptStyle;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    pub run: RunSection,
    pub data: DataSection,
    pub teacher: TeacherSection,
    pub student: StudentSection,
    pub students: StudentsSection,
    pub train: TrainConfig,
    pub eval: EvalSection,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    /// The run directory is `runs/<name>` unless `--dir` says otherwise.
    pub name: String,
    pub seed: u64,
}

impl Default for RunSection {
    fn default() -> Self {
        RunSection {
            name: "default".into(),
            seed: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// The built-in task, or the files in `files`.
    pub source: DataSource,
    pub files: Vec<PathBuf>,
    /// For files: a public format name (gsm8k, svamp, cqa, anli, esnli, strategyqa, bigbench, mmlu) ...
    pub format: Option<String>,
    /// ... or a column mapping, e.g. "input=question,label=answer,kind=number".
    pub map: Option<String>,
    /// Files whose examples are all held out (knowledge probes such as MMLU), with their format.
    pub probe_files: Vec<PathBuf>,
    pub probe_format: Option<String>,
    /// Built-in task: in-distribution problems and held-out-family problems.
    pub examples: usize,
    pub ood_examples: usize,
    pub min_steps: usize,
    pub max_steps: usize,
    /// Largest starting amount (60: values up to 500; 9: one-digit facts).
    pub max_number: i64,
    pub val_fraction: f64,
    pub test_fraction: f64,
    /// Use at most this many examples (0: all), taken in split order.
    pub limit: usize,
}

impl Default for DataSection {
    fn default() -> Self {
        DataSection {
            source: DataSource::Arith,
            files: vec![],
            format: None,
            map: None,
            probe_files: vec![],
            probe_format: None,
            examples: 3000,
            ood_examples: 200,
            min_steps: 1,
            max_steps: 2,
            max_number: 9,
            val_fraction: 0.05,
            test_fraction: 0.1,
            limit: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TeacherSection {
    /// `local` starts the built-in server on loopback; `http` uses `base_url`.
    pub kind: TeacherKind,
    /// Local backend: `solver`, `mimic`, `gold` (the examples' own answers),
    /// or `gguf` (the model in `gguf`).
    pub backend: LocalBackend,
    /// The GGUF file the `gguf` backend serves.
    pub gguf: Option<PathBuf>,
    /// Most requests the `gguf` backend decodes as one batch; unset: from
    /// the machine and the model (see `stages::teach`).
    pub max_batch: Option<usize>,
    /// Where the `gguf` backend runs: `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: String,
    pub base_url: String,
    /// Several servers of the same model (after `base_url`, when given):
    /// requests go to the one with the fewest outstanding, and one that
    /// keeps failing is drained and tried again later.
    pub base_urls: Vec<String>,
    pub model: String,
    /// Name of the environment variable holding the API key (never the key).
    pub api_key_env: Option<String>,
    /// Requests in flight; unset: 16, or for the `gguf` backend what it
    /// decodes at once.
    pub concurrency: Option<usize>,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    /// The longest the teacher may send nothing before an attempt times
    /// out (with streaming, between chunks; `timeout_s` is the old name).
    #[serde(alias = "timeout_s")]
    pub idle_timeout_s: f64,
    /// A cap on each attempt's whole time (none by default).
    pub total_timeout_s: Option<f64>,
    /// Ask for streamed answers (every OpenAI-compatible server streams).
    pub stream: bool,
    /// Retries of a failed request (429, 5xx, time-outs) after the first attempt.
    pub max_retries: u32,
    /// Rows per sealed shard file.
    pub rows_per_shard: usize,
    /// Keep each untouched completion in the shards' `raw_completion`.
    pub keep_raw: bool,
    pub n: u32,
    pub temperature: f32,
    pub max_tokens: u32,
    pub seed: Option<i64>,
    pub prompt_dir: Option<PathBuf>,
    /// `chat`: few-shot examples as chat turns; `plain`: the template's
    /// text as one user message (servers that continue text).
    pub prompt_style: PromptStyle,
    /// Keep only rationales whose answer agrees with gold. (It chooses the
    /// students' training rows: part of the train identity, not the teacher's.)
    pub require_gold: bool,
    /// With several samples, keep answers with at least this vote share.
    pub min_vote_share: f32,
    pub rationalize: bool,
    pub price_prompt: f64,
    pub price_completion: f64,
    pub budget_usd: Option<f64>,
    /// A reasoning model's effort (`minimal`, `low`, `medium`, `high`),
    /// passed through; the limit then goes as `max_completion_tokens`,
    /// which counts the reasoning tokens too.
    pub reasoning_effort: Option<ReasoningEffort>,
    /// Ask for logprobs with this many alternatives a token (0 to 20),
    /// kept in the shards' `top_logprobs`.
    pub top_logprobs: Option<u32>,
    /// `live`: one request at a time over chat completions; `batch`: the
    /// provider's Files and Batch APIs, at the batch price.
    pub mode: TeachMode,
    /// How batches are made and waited for (`mode = "batch"`).
    pub batch: BatchSection,
}

/// `teacher.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TeachMode {
    #[default]
    Live,
    Batch,
}

/// `[teacher.batch]`: the provider's limits and how patiently to wait.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchSection {
    /// Most requests in one batch (OpenAI: 50,000).
    pub max_requests: usize,
    /// Most bytes in one input file (OpenAI: 200 MB).
    pub max_bytes: u64,
    /// The first wait between two looks at a batch (it grows by half each look).
    pub poll_s: f64,
    /// The longest wait between two looks.
    pub poll_max_s: f64,
    /// The share of the live price a batch saves.
    pub discount: f64,
    /// Submissions of a request before it is recorded as failed.
    pub max_attempts: u32,
}

impl Default for BatchSection {
    fn default() -> Self {
        let d = stepwise_teacher::batch::BatchConfig::default();
        BatchSection {
            max_requests: d.max_requests,
            max_bytes: d.max_bytes,
            poll_s: d.poll_min.as_secs_f64(),
            poll_max_s: d.poll_max.as_secs_f64(),
            discount: d.discount,
            max_attempts: d.max_attempts,
        }
    }
}

impl BatchSection {
    pub fn config(&self) -> stepwise_teacher::batch::BatchConfig {
        stepwise_teacher::batch::BatchConfig {
            max_requests: self.max_requests,
            max_bytes: self.max_bytes,
            poll_min: std::time::Duration::from_secs_f64(self.poll_s),
            poll_max: std::time::Duration::from_secs_f64(self.poll_max_s.max(self.poll_s)),
            discount: self.discount,
            max_attempts: self.max_attempts,
            ..Default::default()
        }
    }
}

/// `teacher.reasoning_effort`, as OpenAI, vLLM and OpenRouter read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReasoningEffort {
    Minimal,
    Low,
    Medium,
    High,
}

impl ReasoningEffort {
    pub fn as_str(self) -> &'static str {
        match self {
            ReasoningEffort::Minimal => "minimal",
            ReasoningEffort::Low => "low",
            ReasoningEffort::Medium => "medium",
            ReasoningEffort::High => "high",
        }
    }
}

impl Default for TeacherSection {
    fn default() -> Self {
        TeacherSection {
            kind: TeacherKind::Local,
            backend: LocalBackend::Solver,
            gguf: None,
            max_batch: None,
            device: "cpu".into(),
            base_url: String::new(),
            base_urls: Vec::new(),
            model: String::new(),
            api_key_env: None,
            concurrency: None,
            requests_per_minute: None,
            tokens_per_minute: None,
            idle_timeout_s: 120.0,
            total_timeout_s: None,
            stream: true,
            max_retries: 6,
            rows_per_shard: 5000,
            keep_raw: false,
            n: 1,
            temperature: 0.0,
            max_tokens: 256,
            seed: None,
            prompt_dir: None,
            prompt_style: PromptStyle::Chat,
            require_gold: true,
            min_vote_share: 0.0,
            rationalize: false,
            price_prompt: 0.0,
            price_completion: 0.0,
            budget_usd: None,
            reasoning_effort: None,
            top_logprobs: None,
            mode: TeachMode::Live,
            batch: BatchSection::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StudentSection {
    /// `scratch`, an HF-style directory, or a `.gguf` file to start from.
    pub init: StudentInit,
    /// From scratch: `llama` (decoder-only) or `t5` (encoder-decoder, as in
    /// the paper; `layers` each for encoder and decoder, `d_ff` 4 × hidden).
    pub arch: Arch,
    pub hidden_size: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// BPE vocabulary trained on the run's training text (scratch only).
    pub vocab_size: usize,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: String,
    /// `[student.lora]`: train LoRA adapters on the frozen pretrained
    /// `init` instead of every weight (absent: full fine-tuning).
    pub lora: Option<LoraConfig>,
}

impl Default for StudentSection {
    fn default() -> Self {
        StudentSection {
            init: StudentInit::Scratch,
            arch: Arch::Llama,
            hidden_size: 96,
            layers: 4,
            heads: 4,
            kv_heads: 2,
            vocab_size: 1024,
            device: "cpu".into(),
            lora: None,
        }
    }
}

/// Which students to train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StudentsSection {
    pub variants: Vec<Variant>,
    /// Fractions of the training data to train each variant on (the
    /// data-efficiency sweep); `[1.0]` trains once on all of it.
    pub fractions: Vec<f64>,
    /// What the rationale task learns from: the visible step-by-step
    /// `answer`, a reasoning model's `reasoning` trace, or `both`.
    pub rationale_from: RationaleSource,
}

impl Default for StudentsSection {
    fn default() -> Self {
        StudentsSection {
            variants: vec![Variant::Distill, Variant::LabelGold],
            fractions: vec![1.0],
            rationale_from: RationaleSource::Answer,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSection {
    /// Evaluate on at most this many examples per test split (0: all).
    pub max_examples: usize,
    pub answer_tokens: usize,
    pub rationale_tokens: usize,
    pub batch_size: usize,
    pub bootstrap: usize,
}

impl Default for EvalSection {
    fn default() -> Self {
        EvalSection {
            max_examples: 0,
            answer_tokens: 8,
            rationale_tokens: 96,
            batch_size: 64,
            bootstrap: 1000,
        }
    }
}

impl RunConfig {
    /// Reads a config file; errors name the file, the key and what was expected.
    pub fn load(path: &Path) -> anyhow::Result<RunConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let cfg: RunConfig = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        cfg.validate().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.data.source == DataSource::Files && self.data.files.is_empty() {
            return Err("data.files: give at least one file when data.source = \"files\"".into());
        }
        if self.teacher.kind == TeacherKind::Local
            && self.teacher.backend == LocalBackend::Gguf
            && self.teacher.gguf.is_none()
        {
            return Err("teacher.gguf: give the GGUF file when teacher.backend = \"gguf\"".into());
        }
        let t = &self.teacher;
        if !(t.idle_timeout_s > 0.0 && t.idle_timeout_s.is_finite()) {
            return Err(format!(
                "teacher.idle_timeout_s = {}: must be above 0",
                t.idle_timeout_s
            ));
        }
        if let Some(x) = t.total_timeout_s.filter(|x| !(*x > 0.0 && x.is_finite())) {
            return Err(format!("teacher.total_timeout_s = {x}: must be above 0 (or left out)"));
        }
        if let Some(k) = t.top_logprobs.filter(|k| *k > 20) {
            return Err(format!("teacher.top_logprobs = {k}: at most 20 (the providers' limit)"));
        }
        let b = &t.batch;
        if b.max_requests == 0 || b.max_bytes == 0 || b.max_attempts == 0 {
            return Err("teacher.batch.max_requests, max_bytes and max_attempts: at least 1".into());
        }
        if !(b.poll_s > 0.0 && b.poll_s.is_finite() && b.poll_max_s.is_finite()) {
            return Err(format!("teacher.batch.poll_s = {}: must be above 0", b.poll_s));
        }
        if !(0.0..1.0).contains(&b.discount) {
            return Err(format!(
                "teacher.batch.discount = {}: a share of the price, from 0 to below 1",
                b.discount
            ));
        }
        if t.max_batch == Some(0) || t.concurrency == Some(0) {
            return Err("teacher.max_batch and teacher.concurrency: at least 1 (or left out for the default)".into());
        }
        if self.teacher.kind == TeacherKind::Http && self.teacher.base_url.is_empty() && t.base_urls.is_empty() {
            return Err(
                "teacher.base_url: required when teacher.kind = \"http\" (or teacher.base_urls for several servers)"
                    .into(),
            );
        }
        if let Some(u) = t
            .base_urls
            .iter()
            .find(|u| !u.starts_with("http://") && !u.starts_with("https://"))
        {
            return Err(format!("teacher.base_urls: {u:?} is not an http(s) URL"));
        }
        if self.teacher.kind == TeacherKind::Local && !t.base_urls.is_empty() {
            return Err("teacher.base_urls: only for teacher.kind = \"http\" (the local teacher is one server)".into());
        }
        if self.students.variants.is_empty() {
            return Err("students.variants: give at least one of distill, label-gold, label-teacher".into());
        }
        if self.students.fractions.is_empty() || self.students.fractions.iter().any(|f| !(*f > 0.0 && *f <= 1.0)) {
            return Err(format!(
                "students.fractions = {:?}: each must be in (0, 1]",
                self.students.fractions
            ));
        }
        self.train.validate().map_err(|e| format!("train: {e}"))?;
        if let Some(l) = &self.student.lora {
            if self.student.init == StudentInit::Scratch {
                return Err("student.lora: adapters train on a pretrained model; set student.init to its directory or .gguf file (a from-scratch student is fully trained)".into());
            }
            l.validate().map_err(|e| format!("student.{e}"))?;
        }
        Ok(())
    }

    /// The run directory.
    pub fn run_dir(&self, override_dir: Option<&Path>) -> PathBuf {
        override_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("runs").join(&self.run.name))
    }

    /// As TOML, for `stepwise.toml` in the run directory. Holds no secret: the
    /// key's variable name only.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

/// The commented example `stepwise init` writes.
pub const EXAMPLE: &str = include_str!("../../examples/stepwise.toml");

/// Where the examples come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataSource {
    /// The built-in arithmetic word problems.
    Arith,
    /// `data.files`, in `data.format` or through `data.map`.
    Files,
}

/// How the teacher is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TeacherKind {
    /// The built-in server, started on loopback for the run.
    Local,
    /// Any OpenAI-compatible server at `base_url`.
    Http,
}

/// What answers on the built-in server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LocalBackend {
    /// Exact answers to the built-in task, step by step.
    Solver,
    /// The solver's style with wrong numbers.
    Mimic,
    /// The run's own examples' gold labels and reference rationales: a
    /// perfect teacher of exactly those facts (tests, human rationales).
    Gold,
    /// A real instruct model from a GGUF file.
    Gguf,
}

impl LocalBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            LocalBackend::Solver => "solver",
            LocalBackend::Mimic => "mimic",
            LocalBackend::Gold => "gold",
            LocalBackend::Gguf => "gguf",
        }
    }
}

/// The student's architecture when trained from scratch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Decoder-only, Llama/Qwen2 family.
    Llama,
    /// Encoder-decoder, T5 family.
    T5,
}

/// Where the student starts: fresh weights, or a pretrained model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StudentInit {
    Scratch,
    /// An HF-style directory or a `.gguf` file.
    Pretrained(PathBuf),
}

impl Serialize for StudentInit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            StudentInit::Scratch => s.serialize_str("scratch"),
            StudentInit::Pretrained(p) => s.serialize_str(&p.to_string_lossy()),
        }
    }
}

impl<'de> Deserialize<'de> for StudentInit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "scratch" => StudentInit::Scratch,
            "" => {
                return Err(serde::de::Error::custom(
                    "expected \"scratch\", a model directory or a .gguf file",
                ));
            }
            _ => StudentInit::Pretrained(PathBuf::from(s)),
        })
    }
}
