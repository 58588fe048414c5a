//! Training throughput on CPU: forward, backward and optimizer time per step.
//! Prints numbers; asserts nothing. Compare with `bench/train_step_torch.py`.
//!
//! `cargo bench -p stepwise-student --bench train_step -- [hidden layers heads kv_heads inter vocab batch seq steps]`
//! Default: the ~20M-parameter decoder of the student issue (512, 6, 8, 4, 1376, 8192), batch 8 × 128.
//!
//! `cargo bench -p stepwise-student --bench train_step -- t5 [d_model layers heads d_ff vocab batch src tgt steps]`
//! Default: t5-small's shape (512, 6+6 layers, 8 heads, relu 2048, 32128), batch 16 × 64 → 64.
//!
//! `smollm2-135m` takes SmolLM2-135M's shape (576, 30 layers, 9/3 heads, mlp
//! 1536, vocab 49152, rope theta 1e5) with batch and seq from the numbers
//! after it (`smollm2-135m 8 128 3`). `lora` (with either decoder form)
//! freezes the weights and trains rank-8 adapters (alpha 16) on every
//! projection, as `bench/train_step_torch.py lora` does with PEFT. Every form
//! ends with the process's peak resident memory.

use std::time::Instant;

// See `stepwise_student::alloc`.
#[global_allocator]
static GLOBAL: stepwise_student::alloc::MiMalloc = stepwise_student::alloc::MiMalloc;

use candle_core::{D, DType, Device, Tensor};
use stepwise_student::ModelConfig;
use stepwise_student::llama::{Config, Llama};
use stepwise_student::lora::{Adapters, LoraConfig};
use stepwise_student::ops::nll_rows;
use stepwise_student::optim::{AdamW, AdamWConfig, Grads, accumulate};
use stepwise_student::params::ParamStore;
use stepwise_student::t5::{T5, T5Config};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    stepwise_student::alloc::keep_freed_memory();
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let t5 = raw.iter().any(|a| a == "t5");
    let args: Vec<usize> = raw.iter().filter_map(|a| a.parse().ok()).collect();
    let get = |i: usize, d: usize| args.get(i).copied().unwrap_or(d);
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into());
    let dev = Device::Cpu;
    if t5 {
        let (d_model, layers, heads, d_ff, vocab) = (get(0, 512), get(1, 6), get(2, 8), get(3, 2048), get(4, 32128));
        let (batch, src, tgt, steps) = (get(5, 16), get(6, 64), get(7, 64), get(8, 5));
        let mut cfg = T5Config::small(vocab);
        (cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.d_ff) = (d_model, layers, heads, d_ff);
        cfg.d_kv = d_model / heads;
        let params = ParamStore::init(&cfg.parameter_shapes(), 0.02, 0, &dev)?;
        let model = T5::new(&cfg, &params)?;
        println!(
            "t5: {:.1}M parameters (d_model {d_model}, {layers}+{layers} layers, {heads} heads, relu {d_ff}, vocab {vocab}); batch {batch} x {src} -> {tgt}; threads {threads}",
            params.num_parameters() as f64 / 1e6
        );
        let enc = ids(batch, src, vocab, 7919, &dev)?;
        let dec = ids(batch, tgt + 1, vocab, 104729, &dev)?;
        let (dec_in, target) = (
            dec.narrow(1, 0, tgt)?.contiguous()?,
            dec.narrow(1, 1, tgt)?.contiguous()?,
        );
        let lengths = vec![src; batch];
        let loss = || -> Res<Tensor> {
            nll(
                &model.forward_train(&enc, &lengths, &dec_in, None, DType::F32)?,
                &target,
            )
        };
        return time_steps(&params, steps, batch * (src + tgt), loss);
    }
    let smollm = raw.iter().any(|a| a == "smollm2-135m");
    let lora = raw.iter().any(|a| a == "lora");
    let (shape, rest) = match smollm {
        true => ((576, 30, 9, 3, 1536, 49152), 0),
        false => (
            (get(0, 512), get(1, 6), get(2, 8), get(3, 4), get(4, 1376), get(5, 8192)),
            6,
        ),
    };
    let (hidden, layers, heads, kv, inter, vocab) = shape;
    let (batch, seq, steps) = (get(rest, 8), get(rest + 1, 128), get(rest + 2, 5));
    let mut cfg = Config::tiny(vocab, hidden, layers, heads, kv);
    cfg.intermediate_size = inter;
    cfg.max_position_embeddings = seq + 1;
    if smollm {
        cfg.rope_theta = 100000.0;
    }
    let params = ParamStore::init(&cfg.parameter_shapes(), 0.02, 0, &dev)?;
    let adapters = match lora {
        true => {
            let l = LoraConfig::default();
            let a = Adapters::init(
                &ModelConfig::Llama(cfg.clone()),
                &l,
                std::path::Path::new("base"),
                0,
                &dev,
            )?;
            Some(a)
        }
        false => None,
    };
    let model = match &adapters {
        Some(a) => Llama::with_adapters(&cfg, &params, a)?,
        None => Llama::new(&cfg, &params)?,
    };
    println!(
        "decoder{}: {:.1}M parameters (hidden {hidden}, {layers} layers, {heads}/{kv} heads, mlp {inter}, vocab {vocab}); {}; batch {batch} x {seq}; threads {threads}",
        if smollm { " smollm2-135m" } else { "" },
        params.num_parameters() as f64 / 1e6,
        match &adapters {
            Some(a) => format!(
                "lora r{} on every projection: {:.2}M trained",
                a.config.rank,
                a.params.num_parameters() as f64 / 1e6
            ),
            None => "full fine-tuning".into(),
        }
    );
    let all = ids(batch, seq + 1, vocab, 7919, &dev)?;
    let (inp, target) = (
        all.narrow(1, 0, seq)?.contiguous()?,
        all.narrow(1, 1, seq)?.contiguous()?,
    );
    let lengths = vec![seq; batch];
    let loss = || -> Res<Tensor> { nll(&model.forward_train(&inp, &lengths, None, DType::F32)?, &target) };
    let trained = adapters.as_ref().map_or(&params, |a| &a.params);
    time_steps(trained, steps, batch * seq, loss)
}

/// The process's peak resident set (`VmHWM`), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// A fixed `(b, t)` batch of token ids.
fn ids(b: usize, t: usize, vocab: usize, mult: usize, dev: &Device) -> Res<Tensor> {
    let v: Vec<u32> = (0..b * t).map(|i| ((i * mult) % vocab) as u32).collect();
    Ok(Tensor::from_vec(v, (b, t), dev)?)
}

/// Mean negative log-likelihood of `target` `(b, t)` under `logits` `(b, t, vocab)`,
/// as the trainer computes it.
fn nll(logits: &Tensor, target: &Tensor) -> Res<Tensor> {
    let v = logits.dim(D::Minus1)?;
    Ok(nll_rows(&logits.reshape(((), v))?, &target.flatten_all()?)?.mean_all()?)
}

/// Runs `steps` + 1 training steps (the first warms up allocations and thread
/// pools) and prints the mean forward, backward and optimizer time.
fn time_steps(params: &ParamStore, steps: usize, tokens: usize, loss: impl Fn() -> Res<Tensor>) -> Res<()> {
    let mut opt = AdamW::new(AdamWConfig::default(), params);
    let (mut tf, mut tb, mut to) = (0.0, 0.0, 0.0);
    for step in 0..=steps {
        let t0 = Instant::now();
        let l = loss()?;
        let _ = l.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let mut grads = Grads::new();
        accumulate(&mut grads, params, &l.backward()?)?;
        let t2 = Instant::now();
        opt.step(params, &grads, 1e-4)?;
        let t3 = Instant::now();
        if step > 0 {
            tf += (t1 - t0).as_secs_f64();
            tb += (t2 - t1).as_secs_f64();
            to += (t3 - t2).as_secs_f64();
        }
    }
    let n = steps as f64;
    let total = (tf + tb + to) / n;
    println!(
        "per step: forward {:.3} s, backward {:.3} s, optimizer {:.3} s, total {:.3} s; {:.0} tokens/s",
        tf / n,
        tb / n,
        to / n,
        total,
        tokens as f64 / total
    );
    if let Some(mib) = peak_rss_mib() {
        println!("peak resident memory: {mib:.0} MiB");
    }
    Ok(())
}
