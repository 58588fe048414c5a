//! The `stepwise` binary: everything is in the library (`stepwise_pipeline::cli`).

// See `stepwise_student::alloc`: page faults otherwise cost more than the arithmetic.
#[global_allocator]
static GLOBAL: stepwise_student::alloc::MiMalloc = stepwise_student::alloc::MiMalloc;

fn main() -> std::process::ExitCode {
    stepwise_student::alloc::keep_freed_memory();
    stepwise_pipeline::cli::main()
}
