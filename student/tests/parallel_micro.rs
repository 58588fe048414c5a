//! A step's micro-batches computed side by side on CPU give the same
//! student as one after the other. Its own test binary: candle's element-wise
//! pool must be serial (`device::serial_elementwise`) before any tensor work,
//! as the `stepwise` binary makes it, for the trainer to run them in parallel.

mod common;

use common::toy::{tokenizer, toy, weights};

use candle_core::{DType, Device};
use stepwise_student::device::{parallel_micro_batches, serial_elementwise};
use stepwise_student::train::{TrainConfig, read_log, train};
use stepwise_student::{Config, Student};

#[test]
fn micro_batches_side_by_side_train_the_same_student_as_one_after_the_other() {
    serial_elementwise();
    let data = toy(40, 5);
    let tok = tokenizer(&data);
    let c = TrainConfig {
        steps: 12,
        batch_size: 4,
        grad_accum: 3,
        warmup_steps: 3,
        eval_every: 1000,
        max_len: 64,
        dropout: 0.1,
        dropout_from_step: 4,
        ..TrainConfig::default()
    };
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            assert_eq!(parallel_micro_batches(&Device::Cpu, c.grad_accum), threads > 1);
            let dir = tempfile::tempdir().unwrap();
            let mut s = Student::from_scratch(Config::tiny(0, 32, 2, 4, 2), tok.clone(), 1, &Device::Cpu).unwrap();
            train(dir.path(), &mut s, &c, &data, &[], DType::F32, |_| {}).unwrap();
            (weights(&s), read_log(&dir.path().join("metrics.jsonl")).unwrap())
        })
    };
    let (serial, serial_log) = run(1);
    let (parallel, parallel_log) = run(2);
    assert_eq!(
        serial, parallel,
        "weights differ between serial and parallel micro-batches"
    );
    assert_eq!(serial_log, parallel_log, "the training logs differ");
    assert!(serial_log.iter().any(|l| l.step == 12), "trained all 12 steps");
}
