//! The allocator stepwise's binaries and benchmarks use.
//!
//! candle allocates a fresh buffer for every op. The system allocator hands
//! large ones back to the kernel, and mimalloc by default purges freed memory
//! after 10 ms; either way each training step faults in and zeroes its
//! activations again (28% of a t5-small step in the kernel's page clearing).
//! mimalloc told never to purge reuses them: t5-small training went from 371
//! to 517 tokens/s on 2 cores. The price is a resident size that stays at its
//! peak, which a batch job can pay.

pub use mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 2 and 3's `mi_option_e`.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory for reuse instead of returning it to the OS. Call it
/// first thing in `main` of a binary whose global allocator is [`MiMalloc`].
pub fn keep_freed_memory() {
    // SAFETY: sets a plain integer option; mimalloc reads it at each purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}
