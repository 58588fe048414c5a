//! The local server's `gguf` backend: a real instruct LLM from a GGUF file,
//! run by the student crate's Llama with its projections kept
//! block-quantized, and decoded in batches.
//!
//! Jobs the server hands over together decode as one left-padded batch,
//! sorted by prompt length so padding stays small; each keeps its own
//! `max_tokens`, temperature and seed.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::DType;
use stepwise_student::device::{compute_dtype, pick_device};
use stepwise_student::generate::{Decode, decode_batch};
use stepwise_student::gguf::load_for_inference;
use stepwise_student::llama::Llama;
use stepwise_student::{ChatMessage, StudentTokenizer};
use stepwise_teacher::server::{ArithTeacher, ChatModel, ModelJob, ModelOutput};

use crate::config::LocalBackend;

/// The model the local server serves for `backend`: the solver or the
/// mimic, or (`gguf`) the model in `gguf`, on `device`. `gguf_key` names the
/// setting to give when the file is missing.
pub fn local_backend(
    backend: LocalBackend,
    gguf: Option<&Path>,
    device: &str,
    gguf_key: &str,
) -> Result<Arc<dyn ChatModel>> {
    Ok(match backend {
        LocalBackend::Solver => Arc::new(ArithTeacher::Solver),
        LocalBackend::Mimic => Arc::new(ArithTeacher::Mimic),
        LocalBackend::Gguf => {
            let path = gguf.with_context(|| format!("{gguf_key}: required with the gguf backend"))?;
            Arc::new(GgufTeacher::open(path, device)?)
        }
    })
}

/// The name a GGUF model is served under: its file name without `.gguf`.
pub fn served_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "gguf".into())
}

pub struct GgufTeacher {
    model: Llama,
    tokenizer: StudentTokenizer,
    name: String,
    dtype: DType,
    /// The model's context length.
    context: usize,
}

impl GgufTeacher {
    pub fn open(path: &Path, device: &str) -> Result<GgufTeacher> {
        let device = pick_device(device)?;
        let t = std::time::Instant::now();
        let (model, tokenizer) = load_for_inference(path, &device)?;
        anyhow::ensure!(
            tokenizer.chat_template.is_some(),
            "{}: no tokenizer.chat_template in the GGUF; the gguf backend serves chat models",
            path.display()
        );
        tracing::info!(
            model = %path.display(),
            parameters = model.config.num_parameters(),
            secs = t.elapsed().as_secs_f64(),
            "gguf teacher loaded"
        );
        let context = model.config.max_position_embeddings;
        let name = served_name(path);
        Ok(GgufTeacher {
            dtype: compute_dtype(&device),
            model,
            tokenizer,
            name,
            context,
        })
    }

    fn prompt_ids(&self, job: &ModelJob) -> Result<Vec<u32>, String> {
        let messages: Vec<ChatMessage> = job
            .messages
            .iter()
            .map(|m| ChatMessage {
                role: m.role.clone(),
                content: m.content.clone(),
            })
            .collect();
        let text = self.tokenizer.render_chat(&messages).map_err(|e| e.to_string())?;
        let mut ids = self.tokenizer.encode(&text).map_err(|e| e.to_string())?;
        let room = self.context.saturating_sub(job.max_tokens as usize);
        if ids.len() > room {
            return Err(format!(
                "the prompt is {} tokens; with max_tokens {} it exceeds the model's context of {}",
                ids.len(),
                job.max_tokens,
                self.context
            ));
        }
        ids.shrink_to_fit();
        Ok(ids)
    }
}

impl ChatModel for GgufTeacher {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn complete(&self, jobs: &[ModelJob]) -> Vec<Result<ModelOutput, String>> {
        let mut out: Vec<Result<ModelOutput, String>> = vec![Err("not run".into()); jobs.len()];
        let mut ready: Vec<(usize, Vec<u32>)> = Vec::new();
        for (i, j) in jobs.iter().enumerate() {
            match self.prompt_ids(j) {
                Ok(ids) => ready.push((i, ids)),
                Err(e) => out[i] = Err(e),
            }
        }
        ready.sort_by_key(|(_, ids)| ids.len());
        let prompts: Vec<&[u32]> = ready.iter().map(|(_, ids)| ids.as_slice()).collect();
        let opts: Vec<Decode> = ready
            .iter()
            .map(|(i, _)| Decode {
                max_new_tokens: jobs[*i].max_tokens as usize,
                temperature: jobs[*i].temperature,
                seed: jobs[*i].seed(),
                stop: jobs[*i].stop.clone(),
            })
            .collect();
        let tok = &self.tokenizer;
        match decode_batch(&self.model, tok, &prompts, &opts, self.dtype) {
            Ok(generated) => {
                for ((i, ids), g) in ready.iter().zip(generated) {
                    out[*i] = g
                        .text(tok, &jobs[*i].stop)
                        .map(|text| ModelOutput {
                            text,
                            prompt_tokens: ids.len() as u32,
                            completion_tokens: g.ids.len() as u32 + g.stopped as u32,
                            finish_reason: if g.stopped { "stop" } else { "length" },
                        })
                        .map_err(|e| e.to_string());
                }
            }
            Err(e) => {
                for (i, _) in &ready {
                    out[*i] = Err(format!("decoding: {e}"));
                }
            }
        }
        out
    }
}
