//! Batched decoding with a KV cache: greedy, or sampled at a temperature from
//! a per-row seed (self-consistency asks for several samples).
//!
//! Prompts are sorted by length and left-padded within a batch; each row gets
//! its own positions, and padding keys are masked, so a prompt decodes the
//! same whether it is alone or in a batch. A token prefix every prompt of a
//! batch shares (a few-shot prompt's instructions and examples) is prefilled
//! once, and the padding sits between it and each row's own suffix.

use candle_core::{D, DType, Device, Tensor};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::Result;
use crate::llama::{KvCache, Llama, gapped_mask, left_padded_mask};
use crate::student::Model;
use crate::tokenizer::StudentTokenizer;

/// How one row decodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Decode {
    pub max_new_tokens: usize,
    /// 0 is greedy.
    pub temperature: f32,
    /// Nucleus sampling: draw only from the most likely tokens whose
    /// probabilities sum to at least this (1 keeps every token).
    pub top_p: f32,
    /// Seeds the row's sampler (unused when greedy).
    pub seed: u64,
    /// The row ends once its text contains one of these (the text is cut
    /// before it by [`Generated::text`]).
    pub stop: Vec<String>,
    /// Keep each chosen token's log-probability and this many likeliest
    /// alternatives (under the model's own distribution, before temperature).
    pub top_logprobs: Option<usize>,
}

impl Decode {
    pub fn greedy(max_new_tokens: usize) -> Decode {
        Decode {
            max_new_tokens,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop: Vec::new(),
            top_logprobs: None,
        }
    }
}

/// A chosen token's log-probability and the likeliest alternatives there.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    /// Likeliest first.
    pub top: Vec<(u32, f32)>,
}

/// One row's continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// Without the stop token (a stop string's tokens are included).
    pub ids: Vec<u32>,
    /// Ended on a stop token or string (rather than at `max_new_tokens`).
    pub stopped: bool,
    /// One per id, when [`Decode::top_logprobs`] asked for them.
    pub logprobs: Vec<TokenLogprob>,
}

impl Generated {
    /// The decoded text, cut before the first of `stop`.
    pub fn text(&self, tok: &StudentTokenizer, stop: &[String]) -> Result<String> {
        let mut text = tok.decode(&self.ids)?;
        if let Some(cut) = stop.iter().filter_map(|s| text.find(s.as_str())).min() {
            text.truncate(cut);
        }
        Ok(text)
    }
}

/// Tokens decoded again at each step to look for a stop string (longer stop
/// strings are still found, once complete, by [`Generated::text`]).
const STOP_WINDOW: usize = 16;

/// Greedy continuations of `prompts`, each up to `max_new_tokens` or a stop
/// token, returned in the prompts' order.
pub fn generate(
    model: &Model,
    tok: &StudentTokenizer,
    prompts: &[String],
    max_new_tokens: usize,
    batch_size: usize,
    dtype: DType,
) -> Result<Vec<String>> {
    let max_prompt = match model {
        Model::Llama(m) => m.config.max_position_embeddings.saturating_sub(max_new_tokens).max(1),
        // Relative positions: no limit but memory.
        Model::T5(_) => usize::MAX,
    };
    let mut encoded: Vec<(usize, Vec<u32>)> = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        let mut ids = tok.encode(p)?;
        if ids.len() > max_prompt {
            ids.drain(..ids.len() - max_prompt);
        }
        encoded.push((i, ids));
    }
    encoded.sort_by_key(|(_, ids)| ids.len());
    let mut out = vec![String::new(); prompts.len()];
    for chunk in encoded.chunks(batch_size.max(1)) {
        let ids: Vec<&[u32]> = chunk.iter().map(|(_, ids)| ids.as_slice()).collect();
        let generated: Vec<Vec<u32>> = match model {
            Model::Llama(m) => {
                let opts = vec![Decode::greedy(max_new_tokens); ids.len()];
                decode_batch(m, tok, &ids, &opts, dtype)?
                    .into_iter()
                    .map(|g| g.ids)
                    .collect()
            }
            Model::T5(m) => {
                let t = ids.iter().map(|p| p.len()).max().unwrap_or(1).max(1);
                let mut flat = vec![tok.pad_id; ids.len() * t];
                for (r, p) in ids.iter().enumerate() {
                    flat[r * t..r * t + p.len()].copy_from_slice(p);
                }
                let lengths: Vec<usize> = ids.iter().map(|p| p.len()).collect();
                let enc = Tensor::from_vec(flat, (ids.len(), t), m.device())?;
                m.generate(&enc, &lengths, max_new_tokens, dtype)?
            }
        };
        for ((i, _), g) in chunk.iter().zip(generated) {
            out[*i] = tok.decode(&g)?;
        }
    }
    Ok(out)
}

/// Decodes one left-padded batch, each row by its own [`Decode`].
pub fn decode_batch(
    model: &Llama,
    tok: &StudentTokenizer,
    prompts: &[&[u32]],
    opts: &[Decode],
    dtype: DType,
) -> Result<Vec<Generated>> {
    decode_batch_with(model, tok, prompts, opts, dtype, &mut |_, _| true)
}

/// [`decode_batch`], calling `on_token(row, so_far)` each time a row gains a
/// token or stops: a server streams from it. A row for which it returns
/// false ends there (its client has gone). A row that ends, for any reason,
/// leaves the batch at the next step (its KV cache rows are dropped), so the
/// rest decode at the cost of the rows still running; each row's tokens are
/// the same as when it decodes alone.
pub fn decode_batch_with(
    model: &Llama,
    tok: &StudentTokenizer,
    prompts: &[&[u32]],
    opts: &[Decode],
    dtype: DType,
    on_token: &mut dyn FnMut(usize, &Generated) -> bool,
) -> Result<Vec<Generated>> {
    assert_eq!(prompts.len(), opts.len(), "one Decode per prompt");
    let dev: Device = model.device().clone();
    let b = prompts.len();
    let l = prompts.iter().map(|p| p.len()).max().unwrap_or(0).max(1);
    let pads: Vec<usize> = prompts.iter().map(|p| l - p.len()).collect();
    // Few-shot prompts share their instructions and examples: that prefix is
    // prefilled once and its keys and values copied to every row; each row's
    // own suffix follows after its padding, so the gap is masked.
    let shared = shared_prefix(prompts);
    let gaps: Vec<(usize, usize)> = pads.iter().map(|&pad| (shared, pad)).collect();
    let s = l - shared;
    let mut ids = Vec::with_capacity(b * s);
    let mut pos = Vec::with_capacity(b * s);
    for (p, &pad) in prompts.iter().zip(&pads) {
        ids.extend(std::iter::repeat_n(tok.pad_id, pad).chain(p[shared..].iter().copied()));
        pos.extend((0..s).map(|j| (shared + j.saturating_sub(pad)) as u32));
    }
    let mut samplers: Vec<Option<ChaCha8Rng>> = opts
        .iter()
        .map(|o| (o.temperature > 0.0).then(|| ChaCha8Rng::seed_from_u64(o.seed)))
        .collect();
    let max_new = opts.iter().map(|o| o.max_new_tokens).max().unwrap_or(0);
    let mut out: Vec<Generated> = vec![
        Generated {
            ids: Vec::new(),
            stopped: false,
            logprobs: Vec::new(),
        };
        b
    ];
    if max_new == 0 {
        return Ok(out);
    }
    let mut cache = KvCache::new(model.config.num_hidden_layers);
    if shared > 0 {
        model.forward_last(
            &Tensor::from_vec(prompts[0][..shared].to_vec(), (1, shared), &dev)?,
            &Tensor::arange(0u32, shared as u32, &dev)?.unsqueeze(0)?,
            &left_padded_mask(&[0], shared, 0, &dev)?,
            Some(&mut cache),
            dtype,
        )?;
        cache.retain_rows(&vec![0; b])?;
    }
    let logits = model.forward_last(
        &Tensor::from_vec(ids, (b, s), &dev)?,
        &Tensor::from_vec(pos, (b, s), &dev)?,
        &gapped_mask(&gaps, s, shared, &dev)?,
        Some(&mut cache),
        dtype,
    )?;
    // The original rows still in the batch, in the order of its tensors.
    let mut live: Vec<usize> = (0..b).collect();
    let (mut next, mut lps) = pick(&logits.squeeze(1)?, &live, opts, &mut samplers)?;
    let mut done: Vec<bool> = opts.iter().map(|o| o.max_new_tokens == 0).collect();
    for step in 0..max_new {
        for (k, &r) in live.iter().enumerate() {
            if done[r] {
                continue;
            }
            if tok.is_stop(next[k]) {
                out[r].stopped = true;
                done[r] = true;
            } else {
                out[r].ids.push(next[k]);
                if let Some(lp) = lps[k].take() {
                    out[r].logprobs.push(lp);
                }
                done[r] = out[r].ids.len() >= opts[r].max_new_tokens;
                if !opts[r].stop.is_empty() {
                    let ids = &out[r].ids;
                    let tail = tok.decode(&ids[ids.len().saturating_sub(STOP_WINDOW)..])?;
                    if opts[r].stop.iter().any(|s| tail.contains(s.as_str())) {
                        out[r].stopped = true;
                        done[r] = true;
                    }
                }
            }
            if !on_token(r, &out[r]) {
                done[r] = true;
            }
        }
        let keep: Vec<usize> = (0..live.len()).filter(|&k| !done[live[k]]).collect();
        if keep.is_empty() {
            break;
        }
        if keep.len() < live.len() {
            cache.retain_rows(&keep)?;
            next = keep.iter().map(|&k| next[k]).collect();
            live = keep.iter().map(|&k| live[k]).collect();
        }
        let row_gaps: Vec<(usize, usize)> = live.iter().map(|&r| gaps[r]).collect();
        let pos: Vec<u32> = live.iter().map(|&r| (prompts[r].len() + step) as u32).collect();
        let logits = model.forward(
            &Tensor::from_vec(next.clone(), (live.len(), 1), &dev)?,
            &Tensor::from_vec(pos, (live.len(), 1), &dev)?,
            &gapped_mask(&row_gaps, 1, l + step, &dev)?,
            Some(&mut cache),
            None,
            dtype,
        )?;
        (next, lps) = pick(&logits.squeeze(1)?, &live, opts, &mut samplers)?;
    }
    Ok(out)
}

/// Below this many tokens a shared prefix is not worth a forward pass of its own.
const MIN_SHARED_PREFIX: usize = 32;

/// The token prefix every prompt of a batch shares, leaving each at least
/// one token of its own (its last position gives the first logits); 0 for a
/// single prompt or a prefix too short to be worth prefilling apart.
fn shared_prefix(prompts: &[&[u32]]) -> usize {
    let [first, rest @ ..] = prompts else { return 0 };
    if rest.is_empty() {
        return 0;
    }
    let mut n = first.len();
    for p in rest {
        n = n.min(first.iter().zip(p.iter()).take_while(|(a, b)| a == b).count());
    }
    let n = n.min(prompts.iter().map(|p| p.len()).min().unwrap_or(0).saturating_sub(1));
    if n >= MIN_SHARED_PREFIX { n } else { 0 }
}

/// Zeroes every weight outside the nucleus: the fewest most likely tokens
/// whose share of the total reaches `top_p` (at least one token stays).
fn nucleus(w: &mut [f64], top_p: f64) {
    let total: f64 = w.iter().sum();
    let mut order: Vec<usize> = (0..w.len()).collect();
    order.sort_unstable_by(|&a, &b| w[b].total_cmp(&w[a]));
    let mut acc = 0.0;
    let mut keep = order.len();
    for (k, &i) in order.iter().enumerate() {
        acc += w[i];
        if acc >= top_p * total {
            keep = k + 1;
            break;
        }
    }
    for &i in &order[keep..] {
        w[i] = 0.0;
    }
}

/// The chosen token's log-probability under `logits` and the `k` likeliest.
fn logprobs_of(logits: &[f32], id: u32, k: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + logits.iter().map(|&x| ((x - max) as f64).exp()).sum::<f64>().ln() as f32;
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    let k = k.min(order.len());
    if k > 0 {
        order.select_nth_unstable_by(k - 1, |&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        order.truncate(k);
        order.sort_unstable_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    } else {
        order.clear();
    }
    TokenLogprob {
        id,
        logprob: logits[id as usize] - lse,
        top: order.into_iter().map(|t| (t, logits[t as usize] - lse)).collect(),
    }
}

/// The next token of every row from `(rows, vocab)` logits, row `k` being
/// the batch's row `rows[k]`: the argmax, or a sample from
/// softmax(logits / temperature); and its log-probabilities where asked.
type Picked = (Vec<u32>, Vec<Option<TokenLogprob>>);

fn pick(logits: &Tensor, rows: &[usize], opts: &[Decode], samplers: &mut [Option<ChaCha8Rng>]) -> Result<Picked> {
    let mut next: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
    let wants_lp = rows.iter().any(|&r| opts[r].top_logprobs.is_some());
    if rows.iter().all(|&r| samplers[r].is_none()) && !wants_lp {
        return Ok((next, vec![None; rows.len()]));
    }
    let all: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
    let next = {
        sample_rows(&all, &mut next, rows, opts, samplers);
        next
    };
    let lps = rows
        .iter()
        .enumerate()
        .map(|(k, &r)| opts[r].top_logprobs.map(|n| logprobs_of(&all[k], next[k], n)))
        .collect();
    Ok((next, lps))
}

fn sample_rows(
    all: &[Vec<f32>],
    next: &mut [u32],
    rows: &[usize],
    opts: &[Decode],
    samplers: &mut [Option<ChaCha8Rng>],
) {
    for (k, &r) in rows.iter().enumerate() {
        let Some(rng) = &mut samplers[r] else { continue };
        let t = opts[r].temperature;
        let max = all[k].iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut w: Vec<f64> = all[k].iter().map(|&x| (((x - max) / t) as f64).exp()).collect();
        if opts[r].top_p < 1.0 {
            nucleus(&mut w, opts[r].top_p as f64);
        }
        let mut u = rng.random_range(0.0..w.iter().sum::<f64>());
        for (i, wi) in w.iter().enumerate() {
            if u < *wi {
                next[k] = i as u32;
                break;
            }
            u -= wi;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::nucleus;

    #[test]
    fn logprobs_are_a_log_softmax_with_the_likeliest_first() {
        let lp = super::logprobs_of(&[1.0, 3.0, 2.0, 0.0], 2, 2);
        let z: f32 = [1.0f32, 3.0, 2.0, 0.0].iter().map(|x| x.exp()).sum();
        assert!((lp.logprob - (2.0 - z.ln())).abs() < 1e-6);
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
        assert!((lp.top[0].1 - (3.0 - z.ln())).abs() < 1e-6);
    }

    #[test]
    fn nucleus_keeps_the_fewest_likeliest_tokens_reaching_top_p() {
        let mut w = vec![0.1, 0.5, 0.3, 0.1];
        nucleus(&mut w, 0.7);
        assert_eq!(w, vec![0.0, 0.5, 0.3, 0.0]);
        let mut w = vec![0.1, 0.5, 0.3, 0.1];
        nucleus(&mut w, 0.01);
        assert_eq!(w, vec![0.0, 0.5, 0.0, 0.0], "the likeliest token always stays");
        let mut w = vec![0.25; 4];
        nucleus(&mut w, 1.0);
        assert_eq!(w, vec![0.25; 4]);
    }
}
