//! `mpirun -np 2 stepwise train --run D` (built with `--features mpi`):
//! both students of a run trained data-parallel reach the weights and the
//! log of `stepwise train` in one process, within float tolerance; rank 0
//! alone wrote, and the stage records the same identity.

#![cfg(feature = "mpi")]

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_stepwise");

fn ok(c: &mut Command) -> String {
    let o = c.output().unwrap();
    let t = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{t}");
    t
}

/// `stepwise ARGS` as two MPI processes (as root, on this one machine).
fn mpirun2(args: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "-np", "2", BIN])
        .args(args)
        // Containers often forbid the cross-memory attach of Open MPI's shared-memory transport.
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
    c
}

fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let s = stepwise_student::Student::load(dir, &candle_core::Device::Cpu).unwrap();
    s.params
        .vars()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

#[test]
fn two_mpi_ranks_train_a_run_as_one_process_does() {
    if Command::new("mpirun").arg("--version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "mpirun is missing");
        eprintln!("SKIPPED: mpirun is missing: apt-get install openmpi-bin libopenmpi-dev");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[data]\nexamples = 300\nood_examples = 0\n[student]\nhidden_size = 32\nlayers = 2\nheads = 4\nkv_heads = 2\nvocab_size = 200\n\
         [train]\nsteps = 12\nbatch_size = 8\ngrad_accum = 4\nwarmup_steps = 2\neval_every = 6\nmax_len = 160\n",
    )
    .unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    ok(Command::new(BIN).args(["teach", cfg.to_str().unwrap(), "--dir", one.to_str().unwrap()]));
    ok(Command::new("cp").arg("-r").arg(&one).arg(&two));
    ok(Command::new(BIN).args(["train", "--run", one.to_str().unwrap()]));
    ok(&mut mpirun2(&["train", "--run", two.to_str().unwrap()]));
    for v in ["distill", "label-gold"] {
        let (a, b) = (
            weights(&one.join(format!("student/{v}/final"))),
            weights(&two.join(format!("student/{v}/final"))),
        );
        for ((n, x), (_, y)) in a.iter().zip(&b) {
            let scale = x.iter().fold(1e-6f32, |m, w| m.max(w.abs()));
            let d = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs() / scale));
            assert!(d < 1e-4, "{v} {n}: {d}");
        }
        let lines = |d: &Path| {
            std::fs::read_to_string(d.join(format!("student/{v}/metrics.jsonl")))
                .unwrap()
                .lines()
                .count()
        };
        assert_eq!(lines(&one), lines(&two), "{v}: rank 0 alone wrote the log");
    }
    let identity = |d: &Path| {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("stages/train.json")).unwrap()).unwrap();
        v["identity"].clone()
    };
    assert_eq!(
        identity(&one),
        identity(&two),
        "the world size is no part of the identity"
    );
    // Other stages refuse to run on several processes.
    let o = mpirun2(&["eval", "--run", two.to_str().unwrap()]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("only `stepwise train --run DIR` trains data-parallel"));
}
