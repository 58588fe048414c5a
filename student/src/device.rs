//! Choosing the device at run time.
//!
//! `candle_core::utils::cuda_is_available()` only says whether the `cuda`
//! feature was compiled in; whether a GPU is there is known only by trying.

use candle_core::{DType, Device};

use crate::error::{Result, StudentError};

/// `cpu`, `cuda` / `cuda:N`, or `auto` (CUDA when built with it and a GPU
/// answers, else CPU).
pub fn pick_device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(cuda(0).unwrap_or(Device::Cpu)),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ord = s
                .strip_prefix("cuda:")
                .map(|n| n.parse::<usize>())
                .transpose()
                .map_err(|_| StudentError::Device(format!("{s:?}: expected cuda:N with N a GPU index")))?;
            cuda(ord.unwrap_or(0))
        }
        other => Err(StudentError::Device(format!(
            "{other:?}: expected cpu, cuda, cuda:N or auto"
        ))),
    }
}

fn cuda(ordinal: usize) -> Result<Device> {
    if !candle_core::utils::cuda_is_available() {
        return Err(StudentError::Device(
            "CUDA was asked for, but this binary was built without it; rebuild with `--features cuda`".into(),
        ));
    }
    Device::new_cuda(ordinal).map_err(|e| StudentError::Device(format!("CUDA device {ordinal} is not usable: {e}")))
}

/// bf16 on CUDA (master weights stay f32), f32 on CPU.
pub fn compute_dtype(device: &Device) -> DType {
    if device.is_cuda() { DType::BF16 } else { DType::F32 }
}

/// Makes candle's CPU element-wise ops run on the calling thread, unless
/// `CANDLE_NUM_THREADS` says otherwise. Call it before any CPU tensor work,
/// while the process has one thread, and only where no quantized model will
/// run in this process (candle's quantized matmuls share the same pool).
///
/// Why: candle 0.11 runs element-wise ops over 64K elements on its own pool
/// of spinning threads, beside rayon's pool for matmuls, and serialises
/// concurrent callers on one lock. For the small students trained here that
/// left two cores a third busy spinning (perf: 31% of samples), and it made
/// micro-batches computed side by side wait on each other. Serial element-wise
/// ops with a step's micro-batches on rayon's threads trained the default
/// label-only student in 32.5 s against 58 s (2 cores).
pub fn serial_elementwise() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: called at start-up, before any other thread reads the
        // environment (see above); candle reads it once, when its pool starts.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") }
    }
}

/// Whether a training step's micro-batches may run side by side on rayon's
/// threads: on CPU, with more than one of them, and only when candle's
/// element-wise pool is serial (otherwise the two would queue on its lock and
/// run slower than one after the other).
pub fn parallel_micro_batches(device: &Device, micro_batches: usize) -> bool {
    device.is_cpu()
        && micro_batches > 1
        && rayon::current_num_threads() > 1
        && candle_core::utils::barrier_pool().n_workers() == 0
}
