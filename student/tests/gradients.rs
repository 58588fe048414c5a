//! Finite differences against autograd, in f64, for every module the student
//! is built from and for whole models: a silent no-gradient op (as candle's
//! fused RmsNorm, softmax_last_dim and rope are) fails here.

use candle_core::{D, DType, Device, Result, Tensor, Var};
use stepwise_student::llama::{Config, Llama, causal_mask, linear, rms_norm, rope};
use stepwise_student::ops::{nll_rows, swiglu};
use stepwise_student::params::ParamStore;

mod common;
use common::{check, rand_tensor, var, without_gradient};

/// A scalar from `y` that weights every output differently.
fn project(y: &Tensor, seed: u64) -> Result<Tensor> {
    (y * rand_tensor(y.dims(), seed))?.sum_all()
}

#[test]
fn rms_norm_gradients_match_finite_differences() {
    let x = var(&[2, 3, 8], 1);
    let w = var(&[8], 2);
    check(
        &[("x", &x), ("weight", &w)],
        &|| project(&rms_norm(x.as_tensor(), w.as_tensor(), 1e-5)?, 3),
        12,
    );
}

#[test]
fn rotary_embedding_gradients_match_finite_differences() {
    let x = var(&[2, 2, 5, 8], 4);
    let cos = rand_tensor(&[2, 1, 5, 8], 5);
    let sin = rand_tensor(&[2, 1, 5, 8], 6);
    check(&[("x", &x)], &|| project(&rope(x.as_tensor(), &cos, &sin)?, 7), 12);
}

#[test]
fn linear_gradients_match_finite_differences() {
    let x = var(&[2, 3, 6], 8);
    let w = var(&[4, 6], 9);
    let b = var(&[4], 10);
    check(
        &[("x", &x), ("weight", &w), ("bias", &b)],
        &|| project(&linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()))?, 11),
        12,
    );
}

#[test]
fn softmax_silu_and_cross_entropy_gradients_match_finite_differences() {
    let x = var(&[3, 7], 12);
    check(
        &[("softmax", &x)],
        &|| project(&candle_nn::ops::softmax(x.as_tensor(), D::Minus1)?, 13),
        10,
    );
    check(
        &[("silu", &x)],
        &|| project(&candle_nn::ops::silu(x.as_tensor())?, 14),
        10,
    );
    let targets = Tensor::new(&[[2u32], [0], [6]], &Device::Cpu).unwrap();
    check(
        &[("log_softmax+gather", &x)],
        &|| {
            candle_nn::ops::log_softmax(x.as_tensor(), D::Minus1)?
                .gather(&targets, D::Minus1)?
                .sum_all()?
                .neg()
        },
        10,
    );
}

#[test]
fn fused_swiglu_and_nll_gradients_match_finite_differences() {
    let a = var(&[3, 7], 20);
    let b = var(&[3, 7], 21);
    check(
        &[("gate", &a), ("up", &b)],
        &|| project(&swiglu(a.as_tensor(), b.as_tensor())?, 22),
        10,
    );
    let targets = Tensor::new(&[2u32, 0, 6], &Device::Cpu).unwrap();
    check(
        &[("logits", &a)],
        &|| project(&nll_rows(a.as_tensor(), &targets)?, 23),
        10,
    );
}

/// The fused CPU ops compute what their composed definitions do.
#[test]
fn fused_ops_equal_their_composed_definitions() -> Result<()> {
    let close = |a: &Tensor, b: &Tensor| -> Result<f64> { (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>() };
    let x = rand_tensor(&[2, 3, 8], 30);
    let w = rand_tensor(&[8], 31);
    let reference = x
        .broadcast_div(&(x.sqr()?.mean_keepdim(D::Minus1)? + 1e-5)?.sqrt()?)?
        .broadcast_mul(&w)?;
    assert!(close(&rms_norm(&x, &w, 1e-5)?, &reference)? < 1e-12);

    let x = rand_tensor(&[2, 3, 5, 8], 32);
    let (cos, sin) = (rand_tensor(&[2, 1, 5, 8], 33), rand_tensor(&[2, 1, 5, 8], 34));
    let rotated = Tensor::cat(&[&x.narrow(3, 4, 4)?.neg()?, &x.narrow(3, 0, 4)?], 3)?;
    let reference = (x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?;
    assert!(close(&rope(&x, &cos, &sin)?, &reference)? < 1e-12);

    let (a, b) = (rand_tensor(&[4, 6], 35), rand_tensor(&[4, 6], 36));
    let reference = (candle_nn::ops::silu(&a)? * &b)?;
    assert!(close(&swiglu(&a, &b)?, &reference)? < 1e-12);

    let targets = Tensor::new(&[5u32, 0, 3, 1], &Device::Cpu)?;
    let reference = candle_nn::ops::log_softmax(&a, D::Minus1)?
        .gather(&targets.unsqueeze(1)?, 1)?
        .squeeze(1)?
        .neg()?;
    assert!(close(&nll_rows(&a, &targets)?, &reference)? < 1e-12);
    assert!(
        nll_rows(&a, &Tensor::new(&[6u32, 0, 0, 0], &Device::Cpu)?).is_err(),
        "a target past the vocabulary"
    );
    Ok(())
}

/// Every parameter of a whole model, with padding, grouped-query attention
/// and (for qwen2) q/k/v biases: each gets a gradient, and it is right.
fn whole_model(model_type: &str) {
    let mut cfg = Config::tiny(23, 16, 2, 4, 2);
    cfg.model_type = model_type.into();
    cfg.intermediate_size = 24;
    cfg.tie_word_embeddings = model_type == "llama";
    cfg.max_position_embeddings = 16;
    let params = ParamStore::init(&cfg.parameter_shapes(), 0.3, 1, &Device::Cpu)
        .unwrap()
        .cast(DType::F64)
        .unwrap();
    // Non-trivial norm weights and biases, so their gradients are not special cases.
    for (name, v) in params.vars() {
        if v.rank() == 1 {
            v.set(&rand_tensor(v.dims(), name.len() as u64).affine(0.5, 1.0).unwrap())
                .unwrap();
        }
    }
    let model = Llama::new(&cfg, &params).unwrap();
    let ids = Tensor::new(&[[1u32, 5, 7, 2, 9], [3, 4, 0, 0, 0]], &Device::Cpu).unwrap();
    let lengths = [5, 2];
    let _ = causal_mask(&lengths, 5, &Device::Cpu).unwrap();
    let f = || {
        let logits = model.forward_train(&ids, &lengths, None, DType::F64)?;
        // Only real positions count, as in training.
        let keep = Tensor::new(&[[1f64; 5], [1., 1., 0., 0., 0.]], &Device::Cpu)?.unsqueeze(2)?;
        project(&logits.broadcast_mul(&keep)?, 99)
    };
    let names: Vec<(String, Var)> = params.vars().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let refs: Vec<(&str, &Var)> = names.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let without = without_gradient(&refs, &f);
    assert!(without.is_empty(), "parameters with no gradient: {without:?}");
    let worst = check(&refs, &f, 3);
    eprintln!(
        "{model_type}: {} parameters checked, worst relative error {worst:.2e}",
        refs.len()
    );
}

/// The training loss's head at the target positions only: the same logits
/// as the full forward's rows there, and the right gradient through the
/// gather for every parameter.
#[test]
fn logits_at_target_positions_equal_the_full_forwards_with_the_right_gradients() {
    let mut cfg = Config::tiny(23, 16, 2, 4, 2);
    cfg.intermediate_size = 24;
    cfg.max_position_embeddings = 16;
    let params = ParamStore::init(&cfg.parameter_shapes(), 0.3, 2, &Device::Cpu)
        .unwrap()
        .cast(DType::F64)
        .unwrap();
    let model = Llama::new(&cfg, &params).unwrap();
    let ids = Tensor::new(&[[1u32, 5, 7, 2, 9], [3, 4, 0, 0, 0]], &Device::Cpu).unwrap();
    let lengths = [5, 2];
    // Row 0's last three positions and row 1's two real ones.
    let at = Tensor::new(&[2u32, 3, 4, 5, 6], &Device::Cpu).unwrap();
    let full = model.forward_train(&ids, &lengths, None, DType::F64).unwrap();
    let want = full.reshape((10, 23)).unwrap().index_select(&at, 0).unwrap();
    let got = model.forward_train_at(&ids, &lengths, &at, None, DType::F64).unwrap();
    assert_eq!(got.dims(), &[5, 23]);
    let diff = (got - want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert!(diff < 1e-12, "gathered logits differ by {diff}");

    let f = || project(&model.forward_train_at(&ids, &lengths, &at, None, DType::F64)?, 7);
    let names: Vec<(String, Var)> = params.vars().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let refs: Vec<(&str, &Var)> = names.iter().map(|(k, v)| (k.as_str(), v)).collect();
    assert!(without_gradient(&refs, &f).is_empty());
    check(&refs, &f, 3);
}

#[test]
fn every_llama_parameter_gets_the_right_gradient() {
    whole_model("llama");
}

#[test]
fn every_qwen2_parameter_gets_the_right_gradient() {
    whole_model("qwen2");
}

#[test]
fn frozen_matmul_equals_matmul_and_its_input_gradient_matches_finite_differences() -> Result<()> {
    use stepwise_student::ops::frozen_matmul;
    let w = rand_tensor(&[5, 7], 3); // frozen: a plain tensor, not a variable
    let x = var(&[4, 7], 4);
    let direct = x.as_tensor().matmul(&w.t()?)?;
    let fused = frozen_matmul(x.as_tensor(), &w)?;
    let diff = (direct - &fused)?.abs()?.max_all()?.to_scalar::<f64>()?;
    assert!(diff < 1e-12, "frozen_matmul differs from matmul by {diff}");
    let f = || project(&frozen_matmul(x.as_tensor(), &w)?, 8);
    check(&[("x", &x)], &f, 10);
    Ok(())
}

#[test]
fn fused_lora_linear_equals_its_composed_form_with_the_right_gradients() -> Result<()> {
    use stepwise_student::ops::lora_linear;
    let w = rand_tensor(&[6, 5], 1); // frozen
    let (x, a, b) = (var(&[4, 5], 2), var(&[3, 5], 3), var(&[6, 3], 4));
    let fused = lora_linear(x.as_tensor(), &w, a.as_tensor(), b.as_tensor(), 1.7)?;
    let composed = (x.as_tensor().matmul(&w.t()?)?
        + (x.as_tensor().matmul(&a.as_tensor().t()?)?.matmul(&b.as_tensor().t()?)? * 1.7)?)?;
    let diff = (fused - composed)?.abs()?.max_all()?.to_scalar::<f64>()?;
    assert!(diff < 1e-12, "lora_linear differs from its definition by {diff}");
    let f = || project(&lora_linear(x.as_tensor(), &w, a.as_tensor(), b.as_tensor(), 1.7)?, 9);
    check(&[("x", &x), ("A", &a), ("B", &b)], &f, 8);
    Ok(())
}
