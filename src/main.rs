//! The `gc-assist` binary: parse arguments, start tracing, run the command, map the
//! outcome to an exit code (0 ok, 1 check failed, 2 error).
use std::process::ExitCode;

/// mimalloc rather than glibc malloc: the request path allocates many small short-lived
/// objects from two threads at once, where glibc's arenas spent ~14 % of the service's CPU
/// (BENCHMARKS.md, "HTTP path"). The benches declare the same allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    gc_assist::cli::main()
}
