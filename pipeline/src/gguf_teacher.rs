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
use stepwise_datasets::Example;
use stepwise_student::device::{compute_dtype, pick_device};
use stepwise_student::generate::{Decode, Generated, decode_batch_with};
use stepwise_student::gguf::load_for_inference;
use stepwise_student::llama::Llama;
use stepwise_student::{ChatMessage, StudentTokenizer};
use stepwise_teacher::protocol::{TokenLogprob, TopLogprob};
use stepwise_teacher::server::{ApiError, ArithTeacher, ChatModel, GoldTeacher, ModelJob, ModelOutput};

use crate::config::LocalBackend;

/// The model the local server serves for `backend`: the solver or the
/// mimic, the teacher of `examples`' gold answers, or (`gguf`) the model in
/// `gguf`, on `device`. `gguf_key` names the setting to give when the file
/// is missing; `examples` is `None` where there are none (`teacher serve`).
pub fn local_backend(
    backend: LocalBackend,
    gguf: Option<&Path>,
    device: &str,
    gguf_key: &str,
    examples: Option<&[Example]>,
) -> Result<Arc<dyn ChatModel>> {
    Ok(match backend {
        LocalBackend::Solver => Arc::new(ArithTeacher::Solver),
        LocalBackend::Mimic => Arc::new(ArithTeacher::Mimic),
        LocalBackend::Gold => match examples {
            Some(ex) => Arc::new(GoldTeacher::new(ex)),
            None => anyhow::bail!(
                "the gold backend answers a run's own examples: set teacher.backend = \"gold\" in a run config"
            ),
        },
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
    /// Whether it runs on a GPU.
    gpu: bool,
}

/// Tokens of context a batch row is sized for when choosing the batch: a
/// few-shot prompt and its answer.
const ROW_TOKENS: usize = 1024;

/// The batch size for a model on this machine: on a CPU, batched decoding
/// gains while each core has rows to work on and stops gaining when the
/// cores are saturated (8 rows a core, at most 16); on a GPU, 64. Either is
/// cut so the rows' KV cache fits in a quarter of the free memory.
pub fn batch_for(cfg: &stepwise_student::Config, gpu: bool, cores: usize, free_bytes: Option<u64>) -> usize {
    let compute = if gpu { 64 } else { (8 * cores.max(1)).min(16) };
    let kv_per_row = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim() * 4 * ROW_TOKENS;
    let by_memory = free_bytes.map_or(usize::MAX, |f| (f / 4 / kv_per_row.max(1) as u64) as usize);
    compute.min(by_memory).max(1)
}

/// `MemAvailable` from `/proc/meminfo`, where there is one.
fn free_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
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
            gpu: !device.is_cpu(),
            dtype: compute_dtype(&device),
            model,
            tokenizer,
            name,
            context,
        })
    }

    /// The job's prompt, and how many tokens it may add: `max_tokens`, or
    /// (none given) what the context has left.
    fn prompt_ids(&self, job: &ModelJob) -> Result<(Vec<u32>, usize), String> {
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
        let wanted = job.max_tokens.map_or(1, |m| m as usize);
        if ids.len() + wanted > self.context {
            return Err(format!(
                "the prompt is {} tokens; with max_tokens {wanted} it exceeds the model's context of {}",
                ids.len(),
                self.context
            ));
        }
        ids.shrink_to_fit();
        let max_new = job.max_tokens.map_or(self.context - ids.len(), |m| m as usize);
        Ok((ids, max_new))
    }
}

/// The part of a row's text so far that is final: cut at a complete stop
/// string, without a tail that may be the start of one, or an incomplete
/// UTF-8 character (decoded as U+FFFD) that the next token may complete.
fn settled<'a>(text: &'a str, stop: &[String]) -> &'a str {
    let mut end = stop
        .iter()
        .filter_map(|s| text.find(s.as_str()))
        .min()
        .unwrap_or(text.len());
    let held = stop
        .iter()
        .flat_map(|s| (1..s.len()).filter(|&k| s.is_char_boundary(k)).map(move |k| &s[..k]))
        .filter(|p| text[..end].ends_with(p))
        .map(str::len)
        .max()
        .unwrap_or(0);
    end -= held;
    text[..end].trim_end_matches('\u{FFFD}')
}

/// The tokens of a completion as the API gives them (each token's own
/// text), up to the end of its final text (a stop string's tokens are cut
/// with it).
fn token_logprobs(tok: &StudentTokenizer, g: &Generated, text_len: usize) -> Vec<TokenLogprob> {
    let piece = |id: u32| tok.decode(&[id]).unwrap_or_default();
    let mut out = Vec::with_capacity(g.logprobs.len());
    let mut len = 0;
    for lp in &g.logprobs {
        if len >= text_len {
            break;
        }
        let token = piece(lp.id);
        len += token.len();
        out.push(TokenLogprob {
            token,
            logprob: lp.logprob,
            top_logprobs: lp
                .top
                .iter()
                .map(|&(id, logprob)| TopLogprob {
                    token: piece(id),
                    logprob,
                })
                .collect(),
        });
    }
    out
}

impl ChatModel for GgufTeacher {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn logprobs(&self) -> bool {
        true
    }

    fn complete(&self, jobs: &[ModelJob]) -> Vec<Result<ModelOutput, String>> {
        self.complete_streaming(jobs, &mut |_, _| true)
    }

    /// One batch; each row's text is reported as it settles ([`settled`]),
    /// so the deltas joined are exactly the final text.
    fn complete_streaming(
        &self,
        jobs: &[ModelJob],
        on_text: &mut dyn FnMut(usize, &str) -> bool,
    ) -> Vec<Result<ModelOutput, String>> {
        let mut out: Vec<Result<ModelOutput, String>> = vec![Err("not run".into()); jobs.len()];
        let mut ready: Vec<(usize, Vec<u32>, usize)> = Vec::new();
        for (i, j) in jobs.iter().enumerate() {
            match self.prompt_ids(j) {
                Ok((ids, max_new)) => ready.push((i, ids, max_new)),
                Err(e) => out[i] = Err(e),
            }
        }
        ready.sort_by_key(|(_, ids, _)| ids.len());
        let prompts: Vec<&[u32]> = ready.iter().map(|(_, ids, _)| ids.as_slice()).collect();
        let opts: Vec<Decode> = ready
            .iter()
            .map(|(i, _, max_new)| Decode {
                max_new_tokens: *max_new,
                temperature: jobs[*i].temperature,
                top_p: jobs[*i].top_p,
                seed: jobs[*i].seed(),
                stop: jobs[*i].stop.clone(),
                top_logprobs: jobs[*i].top_logprobs.map(|k| k as usize),
            })
            .collect();
        let tok = &self.tokenizer;
        let mut sent = vec![0usize; ready.len()];
        let mut on_token = |r: usize, g: &Generated| {
            let (i, _, _) = &ready[r];
            if let Ok(text) = tok.decode(&g.ids) {
                let now = settled(&text, &jobs[*i].stop);
                if now.len() > sent[r] && now.is_char_boundary(sent[r]) {
                    let keep = on_text(*i, &now[sent[r]..]);
                    sent[r] = now.len();
                    return keep;
                }
            }
            on_text(*i, "")
        };
        match decode_batch_with(&self.model, tok, &prompts, &opts, self.dtype, &mut on_token) {
            Ok(generated) => {
                for (r, ((i, ids, _), g)) in ready.iter().zip(generated).enumerate() {
                    out[*i] = g
                        .text(tok, &jobs[*i].stop)
                        .map(|text| {
                            match text.get(sent[r]..) {
                                Some(rest) if !rest.is_empty() => {
                                    on_text(*i, rest);
                                }
                                Some(_) => {}
                                None => tracing::warn!(job = i, "streamed text is not a prefix of the final text"),
                            }
                            ModelOutput {
                                logprobs: jobs[*i].top_logprobs.map(|_| token_logprobs(tok, &g, text.len())),
                                text,
                                prompt_tokens: ids.len() as u32,
                                completion_tokens: g.ids.len() as u32 + g.stopped as u32,
                                finish_reason: if g.stopped { "stop" } else { "length" },
                            }
                        })
                        .map_err(|e| e.to_string());
                }
            }
            Err(e) => {
                for (i, _, _) in &ready {
                    out[*i] = Err(format!("decoding: {e}"));
                }
            }
        }
        out
    }

    fn check(&self, job: &ModelJob) -> Result<(), ApiError> {
        self.prompt_ids(job).map(|_| ()).map_err(ApiError::context_length)
    }

    fn suggested_batch(&self) -> Option<usize> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Some(batch_for(
            &self.model.config,
            self.gpu,
            cores,
            if self.gpu { None } else { free_memory() },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::{batch_for, settled};

    #[test]
    fn the_batch_follows_the_cores_and_fits_the_kv_cache_in_memory() {
        // Qwen2.5-1.5B's shape: 28 layers, 2 KV heads of 128.
        let mut cfg = stepwise_student::Config::tiny(0, 1536, 28, 12, 2);
        cfg.max_position_embeddings = 32768;
        assert_eq!(batch_for(&cfg, false, 2, Some(24 << 30)), 16);
        assert_eq!(batch_for(&cfg, false, 1, Some(24 << 30)), 8);
        assert_eq!(batch_for(&cfg, true, 2, None), 64);
        // 28 * 2 * 128 * 2 * 4 bytes a token, 1024 tokens a row: 56 MiB; a quarter of 224 MiB holds one row.
        assert_eq!(batch_for(&cfg, false, 2, Some(224 << 20)), 1);
    }

    #[test]
    fn settled_text_holds_back_what_a_stop_string_or_the_next_token_may_change() {
        let stop = vec!["\nQ:".to_string()];
        assert_eq!(settled("So 7.", &stop), "So 7.");
        assert_eq!(settled("So 7.\n", &stop), "So 7.");
        assert_eq!(settled("So 7.\nQ", &stop), "So 7.");
        assert_eq!(settled("So 7.\nQ: next", &stop), "So 7.");
        assert_eq!(settled("So 7.\nA", &stop), "So 7.\nA");
        assert_eq!(settled("caf\u{FFFD}", &[]), "caf");
    }
}
