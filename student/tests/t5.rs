//! The T5 student: HF's relative-position buckets, gradients against finite
//! differences in f64 for every parameter (relu and gated-gelu), cached
//! decoding equal to full teacher forcing, and a tiny model that learns.

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod common;
use common::{check_where, rand_tensor, without_gradient};
use stepwise_student::optim::{AdamW, AdamWConfig, Grads};
use stepwise_student::params::ParamStore;
use stepwise_student::t5::{T5, T5Cache, T5Config, relative_position_bucket};

fn tiny(ff: &str, vocab: usize) -> T5Config {
    let mut c = T5Config::small(vocab);
    c.d_model = 16;
    c.d_kv = 4;
    c.d_ff = 24;
    c.num_layers = 2;
    c.num_heads = 2;
    c.relative_attention_num_buckets = 8;
    c.relative_attention_max_distance = 16;
    c.feed_forward_proj = ff.into();
    c.tie_word_embeddings = ff == "relu";
    c
}

#[test]
fn relative_position_buckets_follow_hugging_face() {
    // Encoder: bidirectional, 32 buckets, max distance 128 (relative = key - query).
    let enc = |r| relative_position_bucket(r, true, 32, 128);
    assert_eq!(
        [
            enc(0),
            enc(1),
            enc(-1),
            enc(7),
            enc(-7),
            enc(8),
            enc(-8),
            enc(20),
            enc(127),
            enc(200)
        ],
        [0, 17, 1, 23, 7, 24, 8, 26, 31, 31]
    );
    // Decoder: only the past has distinct buckets; the future is bucket 0.
    let dec = |r| relative_position_bucket(r, false, 32, 128);
    assert_eq!(
        [dec(3), dec(0), dec(-1), dec(-15), dec(-16), dec(-20), dec(-200)],
        [0, 0, 1, 15, 16, 17, 31]
    );
}

fn whole_model(ff: &str) {
    let cfg = tiny(ff, 19);
    let params = ParamStore::init(&cfg.parameter_shapes(), 0.3, 3, &Device::Cpu)
        .unwrap()
        .cast(DType::F64)
        .unwrap();
    for (name, v) in params.vars() {
        if v.rank() == 1 {
            v.set(&rand_tensor(v.dims(), name.len() as u64).affine(0.5, 1.0).unwrap())
                .unwrap();
        }
    }
    let model = T5::new(&cfg, &params).unwrap();
    let dev = Device::Cpu;
    let enc = Tensor::new(&[[3u32, 5, 7, 2, 1], [4, 6, 1, 0, 0]], &dev).unwrap();
    let enc_len = [5, 3];
    let dec = Tensor::new(&[[0u32, 9, 8, 1], [0, 11, 1, 0]], &dev).unwrap();
    let keep = Tensor::new(&[[1f64; 4], [1., 1., 1., 0.]], &dev)
        .unwrap()
        .unsqueeze(2)
        .unwrap();
    let weights = rand_tensor(&[2, 4, 19], 99);
    let f = || -> Result<Tensor> {
        let logits = model.forward_train(&enc, &enc_len, &dec, None, DType::F64)?;
        (logits.broadcast_mul(&keep)? * &weights)?.sum_all()
    };
    let vars: Vec<(String, Var)> = params.vars().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let refs: Vec<(&str, &Var)> = vars.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let without = without_gradient(&refs, &f);
    assert!(without.is_empty(), "parameters with no gradient: {without:?}");
    // Sampled where the gradient is not zero: an unused bucket's is, rightly.
    let worst = check_where(&refs, &f, 3, true);
    eprintln!(
        "t5 {ff}: {} parameters checked, worst relative error {worst:.2e}",
        vars.len()
    );
}

#[test]
fn every_t5_parameter_gets_the_right_gradient() {
    whole_model("relu");
}

#[test]
fn every_gated_gelu_t5_parameter_gets_the_right_gradient() {
    whole_model("gated-gelu");
}

#[test]
fn cached_decoding_equals_teacher_forcing() {
    let cfg = tiny("relu", 19);
    let params = ParamStore::init(&cfg.parameter_shapes(), 0.3, 4, &Device::Cpu).unwrap();
    let model = T5::new(&cfg, &params).unwrap();
    let dev = Device::Cpu;
    let enc_ids = Tensor::new(&[[3u32, 5, 7, 2, 1], [4, 6, 1, 0, 0]], &dev).unwrap();
    let lens = [5, 3];
    let dec = Tensor::new(&[[0u32, 9, 8, 4, 12], [0, 11, 3, 3, 7]], &dev).unwrap();
    let full = model.forward_train(&enc_ids, &lens, &dec, None, DType::F32).unwrap();
    let enc = model.encode(&enc_ids, &lens, None, DType::F32).unwrap();
    let mut cache = T5Cache::new(cfg.decoder_layers());
    for step in 0..5 {
        let one = model
            .decode(
                &dec.narrow(1, step, 1).unwrap(),
                &enc,
                &lens,
                Some(&mut cache),
                None,
                DType::F32,
            )
            .unwrap();
        let want = full.narrow(1, step, 1).unwrap();
        let diff: f32 = (one - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(diff < 1e-4, "step {step}: cached logits differ by {diff}");
    }
    assert_eq!(cache.len(), 5);
}

/// Reverses sequences of 3 symbols: needs the encoder, the cross-attention
/// and the decoder's own positions.
#[test]
fn a_tiny_t5_learns_to_reverse() {
    let mut cfg = tiny("relu", 12);
    cfg.d_model = 32;
    cfg.d_kv = 8;
    cfg.num_heads = 4;
    cfg.d_ff = 64;
    cfg.dropout_rate = 0.0;
    let dev = Device::Cpu;
    let params = ParamStore::init(&cfg.parameter_shapes(), 0.1, 0, &dev).unwrap();
    let model = T5::new(&cfg, &params).unwrap();
    let mut opt = AdamW::new(
        AdamWConfig {
            lr: 1e-2,
            weight_decay: 0.0,
            ..Default::default()
        },
        &params,
    );
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    // Symbols 2..12; 0 pads and starts the decoder, 1 ends.
    let sample = |rng: &mut ChaCha8Rng| -> Vec<u32> { (0..3).map(|_| rng.random_range(2..12u32)).collect() };
    let batch = |rng: &mut ChaCha8Rng, n: usize| {
        let xs: Vec<Vec<u32>> = (0..n).map(|_| sample(rng)).collect();
        let enc: Vec<u32> = xs.iter().flat_map(|x| x.iter().copied().chain([1])).collect();
        let tgt: Vec<Vec<u32>> = xs
            .iter()
            .map(|x| x.iter().rev().copied().chain([1]).collect())
            .collect();
        let dec: Vec<u32> = tgt
            .iter()
            .flat_map(|t| [0].into_iter().chain(t[..3].iter().copied()))
            .collect();
        let tgt: Vec<u32> = tgt.concat();
        (
            xs,
            Tensor::from_vec(enc, (n, 4), &dev).unwrap(),
            Tensor::from_vec(dec, (n, 4), &dev).unwrap(),
            Tensor::from_vec(tgt, n * 4, &dev).unwrap(),
        )
    };
    let mut first = None;
    let mut last = 0.0;
    for _ in 0..600 {
        let (_, enc, dec, tgt) = batch(&mut rng, 32);
        let logits = model.forward_train(&enc, &[4; 32], &dec, None, DType::F32).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits.reshape((32 * 4, 12)).unwrap(), &tgt).unwrap();
        let g = loss.backward().unwrap();
        let mut grads = Grads::new();
        for (name, v) in params.vars() {
            if let Some(t) = g.get(v.as_tensor()) {
                grads.insert(name.clone(), t.flatten_all().unwrap().to_vec1().unwrap());
            }
        }
        opt.step(&params, &grads, 1e-2).unwrap();
        last = loss.to_scalar::<f32>().unwrap();
        first.get_or_insert(last);
    }
    let first = first.unwrap();
    eprintln!("loss {first:.3} -> {last:.3}");
    assert!(last < first / 10.0, "loss {first} -> {last}");
    let (xs, enc, _, _) = batch(&mut rng, 16);
    let out = model.generate(&enc, &[4; 16], 6, DType::F32).unwrap();
    let right = xs
        .iter()
        .zip(&out)
        .filter(|(x, o)| x.iter().rev().copied().collect::<Vec<_>>() == **o)
        .count();
    eprintln!("{right}/16 reversed exactly");
    assert!(right >= 14, "{right}/16 reversed: {out:?}");
}
