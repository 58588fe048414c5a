//! Training throughput on CPU: forward, backward and optimizer time per step
//! for a decoder of a given shape. Prints numbers; asserts nothing.
//!
//! `cargo bench -p stepwise-student --bench train_step -- [hidden layers heads kv_heads inter vocab batch seq steps]`
//! Default: the ~20M-parameter decoder of the student issue (512, 6, 8, 4, 1376, 8192), batch 8 × 128.

use std::time::Instant;

// Reuses freed blocks instead of returning them to the kernel: candle allocates
// a fresh buffer per op, and with the system allocator page faults cost more
// than the arithmetic.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use candle_core::{D, DType, Device, Tensor};
use stepwise_student::llama::{Config, Llama};
use stepwise_student::optim::{AdamW, AdamWConfig, Grads};
use stepwise_student::params::ParamStore;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let get = |i: usize, d: usize| args.get(i).copied().unwrap_or(d);
    let (hidden, layers, heads, kv, inter, vocab) =
        (get(0, 512), get(1, 6), get(2, 8), get(3, 4), get(4, 1376), get(5, 8192));
    let (batch, seq, steps) = (get(6, 8), get(7, 128), get(8, 5));
    let mut cfg = Config::tiny(vocab, hidden, layers, heads, kv);
    cfg.intermediate_size = inter;
    cfg.max_position_embeddings = seq + 1;
    let dev = Device::Cpu;
    let params = ParamStore::init(&cfg.parameter_shapes(), 0.02, 0, &dev)?;
    let model = Llama::new(&cfg, &params)?;
    let mut opt = AdamW::new(AdamWConfig::default(), &params);
    println!(
        "decoder: {:.1}M parameters (hidden {hidden}, {layers} layers, {heads}/{kv} heads, mlp {inter}, vocab {vocab}); batch {batch} x {seq}; threads {}",
        params.num_parameters() as f64 / 1e6,
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into())
    );
    let ids: Vec<u32> = (0..batch * (seq + 1)).map(|i| ((i * 7919) % vocab) as u32).collect();
    let ids = Tensor::from_vec(ids, (batch, seq + 1), &dev)?;
    let inp = ids.narrow(1, 0, seq)?.contiguous()?;
    let tgt = ids.narrow(1, 1, seq)?.contiguous()?.unsqueeze(2)?;
    let lengths = vec![seq; batch];
    let (mut tf, mut tb, mut to) = (0.0, 0.0, 0.0);
    for step in 0..=steps {
        let t0 = Instant::now();
        let logits = model.forward_train(&inp, &lengths, None, DType::F32)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let loss = logp.gather(&tgt, D::Minus1)?.mean_all()?.neg()?;
        let _ = loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let g = loss.backward()?;
        let mut grads = Grads::new();
        for (name, var) in params.vars() {
            if let Some(t) = g.get(var.as_tensor()) {
                grads.insert(name.clone(), t.flatten_all()?.to_vec1()?);
            }
        }
        drop(g);
        let t2 = Instant::now();
        opt.step(&params, &grads, 1e-4)?;
        let t3 = Instant::now();
        if step > 0 {
            // Step 0 warms up allocations and thread pools.
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
        (batch * seq) as f64 / total
    );
    Ok(())
}
