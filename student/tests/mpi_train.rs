//! Data-parallel training over MPI (`--features mpi`): `mpirun -np 2` on
//! CPU reaches the weights of one process training the same global batch,
//! within float tolerance (only the summation order differs); only rank 0
//! writes; a 2-rank checkpoint resumes exactly with 2 ranks, and with 1.
//!
//! The test binary is its own MPI program: under `mpirun` (with
//! `STEPWISE_MPI_WORKER_OUT` set) the same test function trains as one rank.

#![cfg(feature = "mpi")]

mod common;

use common::toy::{tokenizer, toy, weights};
use std::path::Path;
use std::process::Command;

use candle_core::{DType, Device};
use stepwise_student::train::{TrainConfig, checkpoint_dir, read_log, train};
use stepwise_student::{Config, Student, StudentTokenizer};

const WORKER_OUT: &str = "STEPWISE_MPI_WORKER_OUT";
const TEST: &str = "two_ranks_reach_the_single_process_weights_and_resume_exactly";

fn cfg() -> TrainConfig {
    TrainConfig {
        steps: 16,
        batch_size: 4,
        // Four micro-batches a step: two per rank.
        grad_accum: 4,
        warmup_steps: 4,
        eval_every: 1000,
        max_len: 64,
        dropout: 0.1,
        dropout_from_step: 3,
        ..TrainConfig::default()
    }
}

fn fresh(tok: &StudentTokenizer, seed: u64) -> Student {
    Student::from_scratch(Config::tiny(0, 32, 2, 4, 2), tok.clone(), seed, &Device::Cpu).unwrap()
}

/// One training run into `out` with whatever world this process is in.
fn train_into(out: &Path, seed: u64) -> Option<u64> {
    let data = toy(40, 3);
    let tok = tokenizer(&data);
    let mut s = fresh(&tok, seed);
    train(out, &mut s, &cfg(), &data, &[], DType::F32, |_| {})
        .unwrap()
        .resumed_from
}

fn final_weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    weights(&Student::load(&dir.join("final"), &Device::Cpu).unwrap())
}

/// The largest difference between two sets of weights, relative to the largest weight.
fn max_rel_diff(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut worst = 0f32;
    for ((na, va), (nb, vb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        let scale = va.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
        for (x, y) in va.iter().zip(vb) {
            worst = worst.max((x - y).abs() / scale);
        }
    }
    worst
}

fn mpirun(np: usize, out: &Path) {
    let o = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", &np.to_string()])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--test-threads", "1", "--nocapture"])
        .env(WORKER_OUT, out)
        // Containers often forbid the cross-memory attach of Open MPI's shared-memory transport.
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .output()
        .expect("mpirun runs");
    assert!(
        o.status.success(),
        "mpirun -np {np}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn two_ranks_reach_the_single_process_weights_and_resume_exactly() {
    if let Some(out) = std::env::var_os(WORKER_OUT) {
        let _world = stepwise_student::dist::init().unwrap();
        let (rank, size) = stepwise_student::dist::rank_and_size();
        assert!(size > 1 || std::env::var_os("OMPI_COMM_WORLD_SIZE").is_some_and(|v| v == "1"));
        let resumed = train_into(Path::new(&out), 1);
        if rank == 0 {
            std::fs::write(Path::new(&out).join("resumed_from"), format!("{resumed:?}")).unwrap();
        }
        return;
    }
    if Command::new("mpirun").arg("--version").output().is_err() {
        let msg = "mpirun is missing: apt-get install openmpi-bin libopenmpi-dev";
        assert!(std::env::var_os("CI").is_none(), "{msg}");
        eprintln!("SKIPPED: {msg}");
        return;
    }
    let single = tempfile::tempdir().unwrap();
    assert_eq!(train_into(single.path(), 1), None);
    let two = tempfile::tempdir().unwrap();
    mpirun(2, two.path());
    let d = max_rel_diff(&final_weights(single.path()), &final_weights(two.path()));
    eprintln!("2 ranks against 1 process: largest weight difference {d:e} (relative to the largest weight)");
    assert!(
        d < 1e-4,
        "2 ranks differ from 1 process by {d} (relative to the largest weight)"
    );
    assert!(
        d > 0.0 || cfg().grad_accum == 1,
        "bit-identical is possible but unlikely: summation order differs"
    );
    // Rank 0 alone wrote the log: one line per step.
    let steps: Vec<u64> = read_log(&two.path().join("metrics.jsonl"))
        .unwrap()
        .iter()
        .filter(|l| l.kind == "train")
        .map(|l| l.step)
        .collect();
    assert_eq!(steps, (1..=16).collect::<Vec<_>>());
    let (la, lb) = (
        read_log(&single.path().join("metrics.jsonl")).unwrap(),
        read_log(&two.path().join("metrics.jsonl")).unwrap(),
    );
    for (a, b) in la.iter().zip(&lb) {
        assert!(
            (a.loss - b.loss).abs() < 1e-4 * a.loss.abs().max(1.0),
            "step {}: {} vs {}",
            a.step,
            a.loss,
            b.loss
        );
        assert_eq!(a.tokens, b.tokens, "step {}: tokens seen", a.step);
    }

    // Killed after the checkpoint at step 8: resumed with 2 ranks, exactly
    // the uninterrupted 2-rank run (same ranks, same summation order).
    let resumed = tempfile::tempdir().unwrap();
    mpirun(2, resumed.path());
    std::fs::remove_dir_all(checkpoint_dir(resumed.path(), 16)).unwrap();
    std::fs::remove_dir_all(resumed.path().join("final")).unwrap();
    mpirun(2, resumed.path());
    assert_eq!(
        std::fs::read_to_string(resumed.path().join("resumed_from")).unwrap(),
        "Some(8)"
    );
    assert_eq!(
        final_weights(two.path()),
        final_weights(resumed.path()),
        "2-rank resume is not exact"
    );

    // The same checkpoint resumed by one process: the single run's weights
    // within tolerance (its first 8 steps were summed by 2 ranks).
    std::fs::remove_dir_all(checkpoint_dir(resumed.path(), 16)).unwrap();
    std::fs::remove_dir_all(resumed.path().join("final")).unwrap();
    assert_eq!(train_into(resumed.path(), 99), Some(8));
    let d = max_rel_diff(&final_weights(single.path()), &final_weights(resumed.path()));
    assert!(d < 1e-4, "resumed with 1 process: {d}");
}
