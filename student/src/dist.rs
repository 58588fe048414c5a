//! Data-parallel training across processes. The trainer already sums each
//! step's gradients on the host (`optim::accumulate`), so R processes
//! (`mpirun -np R`, `srun -n R`) each take their share of the step's
//! micro-batches, then sum their gradient sums and loss counters with one
//! all-reduce before clipping and the optimizer step. Every rank takes the
//! same step from the same sums, so the weights stay equal on every rank;
//! rank 0 alone writes checkpoints, logs and the final model. The data
//! order is a function of (seed, step), so a checkpoint resumes with any R
//! for the same global batch.
//!
//! The world size is an operational knob: never part of a training run's
//! identity. Sums differ from one process's only in summation order.
//!
//! MPI is behind the `mpi` feature (Open MPI or MPICH, through the `mpi`
//! crate); NCCL waits for gradients that stay on the GPU.

use std::cell::RefCell;

use crate::error::{Result, StudentError};

/// The processes training together.
pub trait Collective {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Sums `buf` elementwise over every rank, in place, on every rank.
    fn sum_f32(&self, buf: &mut [f32]);
    fn sum_f64(&self, buf: &mut [f64]);
    /// Waits until every rank is here.
    fn barrier(&self);
}

/// One process alone.
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn sum_f32(&self, _: &mut [f32]) {}
    fn sum_f64(&self, _: &mut [f64]) {}
    fn barrier(&self) {}
}

/// True when an MPI launcher started this process (Open MPI, MPICH/Hydra,
/// PMIx, or `srun` with more than one task).
pub fn launched_by_mpi() -> Option<usize> {
    let var = |k: &str| std::env::var(k).ok().and_then(|v| v.trim().parse::<usize>().ok());
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"]
        .iter()
        .find_map(|k| var(k))
        .or_else(|| var("SLURM_STEP_NUM_TASKS").filter(|_| std::env::var_os("SLURM_PROCID").is_some()))
        .filter(|n| *n > 1)
}

#[cfg(feature = "mpi")]
mod with_mpi {
    use super::Collective;
    use mpi::collective::{CommunicatorCollectives, SystemOperation};
    use mpi::topology::Communicator;

    /// `MPI_COMM_WORLD`; dropping it finalises MPI.
    pub struct Mpi {
        pub(super) universe: mpi::environment::Universe,
    }

    impl Collective for Mpi {
        fn rank(&self) -> usize {
            self.universe.world().rank() as usize
        }
        fn size(&self) -> usize {
            self.universe.world().size() as usize
        }
        fn sum_f32(&self, buf: &mut [f32]) {
            let send = buf.to_vec();
            self.universe
                .world()
                .all_reduce_into(&send[..], buf, SystemOperation::sum());
        }
        fn sum_f64(&self, buf: &mut [f64]) {
            let send = buf.to_vec();
            self.universe
                .world()
                .all_reduce_into(&send[..], buf, SystemOperation::sum());
        }
        fn barrier(&self) {
            self.universe.world().barrier();
        }
    }
}

thread_local! {
    static WORLD: RefCell<Option<Box<dyn Collective>>> = const { RefCell::new(None) };
}

/// Held by `main` for the life of the process: the world the trainer uses.
/// Dropping it finalises MPI.
pub struct WorldGuard(());

impl Drop for WorldGuard {
    fn drop(&mut self) {
        WORLD.with(|w| w.borrow_mut().take());
    }
}

/// Joins the processes this one was launched with: MPI's world under an
/// MPI launcher (with the `mpi` feature), else this process alone. Call
/// once, first thing in `main`, on the thread that trains.
pub fn init() -> Result<WorldGuard> {
    let world: Box<dyn Collective> = match launched_by_mpi() {
        None => Box::new(Single),
        Some(n) => init_mpi(n)?,
    };
    if world.size() > 1 {
        tracing::info!(
            rank = world.rank(),
            size = world.size(),
            "data-parallel training over MPI"
        );
    }
    WORLD.with(|w| *w.borrow_mut() = Some(world));
    Ok(WorldGuard(()))
}

#[cfg(feature = "mpi")]
fn init_mpi(_: usize) -> Result<Box<dyn Collective>> {
    let universe = mpi::initialize().ok_or_else(|| StudentError::Config("MPI was already initialised".into()))?;
    Ok(Box::new(with_mpi::Mpi { universe }))
}

#[cfg(not(feature = "mpi"))]
fn init_mpi(n: usize) -> Result<Box<dyn Collective>> {
    Err(StudentError::Config(format!(
        "launched by an MPI launcher with {n} processes, but this build has no MPI: every process would train alone and write the same files; build with --features mpi"
    )))
}

/// Runs `f` with the world [`init`] joined (this process alone without one).
pub fn with_world<T>(f: impl FnOnce(&dyn Collective) -> T) -> T {
    WORLD.with(|w| match w.borrow().as_deref() {
        Some(c) => f(c),
        None => f(&Single),
    })
}

/// This process's rank and the world's size.
pub fn rank_and_size() -> (usize, usize) {
    with_world(|w| (w.rank(), w.size()))
}

/// Whether this process writes: rank 0 (the only one without MPI).
pub fn is_writer() -> bool {
    rank_and_size().0 == 0
}

/// Waits for every process of the world (a no-op alone).
pub fn barrier() {
    with_world(|w| w.barrier());
}

/// The micro-batches of a step that rank `rank` of `size` computes.
pub fn my_micro_batches(grad_accum: usize, rank: usize, size: usize) -> impl Iterator<Item = usize> {
    (0..grad_accum).filter(move |m| m % size == rank)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_micro_batch_is_computed_by_exactly_one_rank() {
        for size in 1..6 {
            let mut seen = vec![0; 7];
            for rank in 0..size {
                for m in my_micro_batches(7, rank, size) {
                    seen[m] += 1;
                }
            }
            assert!(seen.iter().all(|n| *n == 1), "size {size}: {seen:?}");
        }
    }

    #[test]
    fn without_a_launcher_the_world_is_this_process() {
        assert_eq!(rank_and_size(), (0, 1));
    }
}
