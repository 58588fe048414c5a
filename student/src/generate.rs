//! Batched greedy decoding with a KV cache.
//!
//! Prompts are sorted by length and left-padded within a batch; each row gets
//! its own positions, and padding keys are masked, so a prompt decodes the
//! same whether it is alone or in a batch.

use candle_core::{D, DType, Device, Tensor};

use crate::error::Result;
use crate::llama::{KvCache, Llama, MASKED};
use crate::tokenizer::StudentTokenizer;

/// Greedy continuations of `prompts`, each up to `max_new_tokens` or the end
/// token, returned in the prompts' order.
pub fn generate(
    model: &Llama,
    tok: &StudentTokenizer,
    prompts: &[String],
    max_new_tokens: usize,
    batch_size: usize,
    dtype: DType,
) -> Result<Vec<String>> {
    let max_prompt = model
        .config
        .max_position_embeddings
        .saturating_sub(max_new_tokens)
        .max(1);
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
        let generated = generate_ids(model, tok, &ids, max_new_tokens, dtype)?;
        for ((i, _), g) in chunk.iter().zip(generated) {
            out[*i] = tok.decode(&g)?;
        }
    }
    Ok(out)
}

/// Greedy token ids for one left-padded batch, each cut at the end token.
pub fn generate_ids(
    model: &Llama,
    tok: &StudentTokenizer,
    prompts: &[&[u32]],
    max_new_tokens: usize,
    dtype: DType,
) -> Result<Vec<Vec<u32>>> {
    let dev: Device = model.device().clone();
    let b = prompts.len();
    let l = prompts.iter().map(|p| p.len()).max().unwrap_or(0).max(1);
    let pads: Vec<usize> = prompts.iter().map(|p| l - p.len()).collect();
    let mut ids = Vec::with_capacity(b * l);
    let mut pos = Vec::with_capacity(b * l);
    for (p, &pad) in prompts.iter().zip(&pads) {
        ids.extend(std::iter::repeat_n(tok.pad_id, pad).chain(p.iter().copied()));
        pos.extend((0..l).map(|j| j.saturating_sub(pad) as u32));
    }
    let mut mask = vec![0f32; b * l * l];
    for (r, &pad) in pads.iter().enumerate() {
        for i in 0..l {
            for j in 0..l {
                if j > i || j < pad {
                    mask[r * l * l + i * l + j] = MASKED;
                }
            }
        }
    }
    let mut cache = KvCache::new(model.config.num_hidden_layers);
    let logits = model.forward(
        &Tensor::from_vec(ids, (b, l), &dev)?,
        &Tensor::from_vec(pos, (b, l), &dev)?,
        &Tensor::from_vec(mask, (b, 1, l, l), &dev)?,
        Some(&mut cache),
        None,
        dtype,
    )?;
    let mut next: Vec<u32> = logits.narrow(1, l - 1, 1)?.squeeze(1)?.argmax(D::Minus1)?.to_vec1()?;
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); b];
    let mut done = vec![false; b];
    for step in 0..max_new_tokens {
        for r in 0..b {
            if !done[r] {
                if tok.is_stop(next[r]) {
                    done[r] = true;
                } else {
                    out[r].push(next[r]);
                }
            }
        }
        if step + 1 == max_new_tokens || done.iter().all(|&d| d) {
            break;
        }
        let tk = l + step + 1;
        let pos: Vec<u32> = prompts.iter().map(|p| (p.len() + step) as u32).collect();
        let mut mask = vec![0f32; b * tk];
        for (r, &pad) in pads.iter().enumerate() {
            mask[r * tk..r * tk + pad].fill(MASKED);
        }
        let logits = model.forward(
            &Tensor::from_vec(next.clone(), (b, 1), &dev)?,
            &Tensor::from_vec(pos, (b, 1), &dev)?,
            &Tensor::from_vec(mask, (b, 1, 1, tk), &dev)?,
            Some(&mut cache),
            None,
            dtype,
        )?;
        next = logits.squeeze(1)?.argmax(D::Minus1)?.to_vec1()?;
    }
    Ok(out)
}
