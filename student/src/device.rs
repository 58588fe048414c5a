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
