#![forbid(unsafe_code)]

/// The service allocates many small short-lived objects per user (maps, strings); mimalloc
/// serves them far faster than the system allocator under concurrency.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    touchpoint_local::main_entry()
}
