//! Decode throughput of a GGUF model in the student's Llama: projections kept
//! block-quantized (what the gguf teacher serves), or with `--dense`
//! dequantised to f32 (what a student trains).
//!
//! `cargo bench -p stepwise-student --bench decode -- MODEL.gguf [--dense] [NEW_TOKENS] [BATCH...]`
//!
//! Prints, per batch size, decode tokens/s summed over rows (every row forced
//! to decode NEW_TOKENS: no stop token ends a row early) and the prompt's
//! prefill time. Compare with `bench/llama_cpp_decode.py` on the same file.

use std::time::Instant;

use candle_core::{DType, Device};
use stepwise_student::generate::{Decode, decode_batch};
use stepwise_student::gguf::load_for_inference;
use stepwise_student::{ChatMessage, Model, Student};

// See `stepwise_student::alloc`.
#[global_allocator]
static GLOBAL: stepwise_student::alloc::MiMalloc = stepwise_student::alloc::MiMalloc;

fn main() {
    stepwise_student::alloc::keep_freed_memory();
    let mut args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let dense = args.iter().any(|a| a == "--dense");
    args.retain(|a| a != "--dense");
    let path = args.first().expect("usage: decode MODEL.gguf [NEW_TOKENS] [BATCH...]");
    let new_tokens: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(64);
    let batches: Vec<usize> = if args.len() > 2 {
        args[2..].iter().map(|s| s.parse().unwrap()).collect()
    } else {
        vec![1, 4, 16]
    };
    let t0 = Instant::now();
    let (model, mut tok) = if dense {
        let s = Student::from_gguf(path.as_ref(), &Device::Cpu).unwrap();
        let Model::Llama(m) = s.model else {
            unreachable!("a GGUF model is decoder-only")
        };
        (m, s.tokenizer)
    } else {
        load_for_inference(path.as_ref(), &Device::Cpu).unwrap()
    };
    println!(
        "loaded {} ({:.0}M parameters, {}) in {:.1}s, threads {}",
        path,
        model.config.num_parameters() as f64 / 1e6,
        if dense {
            "dequantised to f32"
        } else {
            "quantized projections"
        },
        t0.elapsed().as_secs_f64(),
        rayon::current_num_threads()
    );
    // Forced length: nothing stops a row early.
    tok.stop_ids.clear();
    let (model, tok) = (&model, tok);
    let prompt = tok
        .render_chat(&[ChatMessage {
            role: "user".into(),
            content: "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. \
                      How many clips did Natalia sell altogether in April and May? Think step by step."
                .into(),
        }])
        .unwrap();
    let ids = tok.encode(&prompt).unwrap();
    println!("prompt {} tokens, {new_tokens} new tokens per row", ids.len());
    // Warm-up: candle repacks quantized weights on first use.
    decode_batch(model, &tok, &[ids.as_slice()], &[Decode::greedy(2)], DType::F32).unwrap();
    for &b in &batches {
        let prompts: Vec<&[u32]> = vec![ids.as_slice(); b];
        let t = Instant::now();
        decode_batch(model, &tok, &prompts, &vec![Decode::greedy(1); b], DType::F32).unwrap();
        let prefill = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let out = decode_batch(model, &tok, &prompts, &vec![Decode::greedy(new_tokens); b], DType::F32).unwrap();
        let total = t.elapsed().as_secs_f64();
        let n: usize = out.iter().map(|g| g.ids.len()).sum();
        let decode = (total - prefill).max(1e-9);
        println!(
            "batch {b:3}: prefill {prefill:.2}s, decode {:.1} tokens/s ({:.1} per row), {n} tokens in {total:.2}s",
            (n - b) as f64 / decode,
            (n - b) as f64 / decode / b as f64
        );
    }
}
