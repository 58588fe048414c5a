//! # stepwise-student
//!
//! Not built yet (the student issue): differentiable Llama/Qwen2 and T5
//! models in candle, the Distilling Step-by-Step trainer and generation. The
//! crate exists so the workspace has its final shape; it exports nothing.
