//! The `gc-assist` binary: parse arguments, start tracing, run the command, map the
//! outcome to an exit code (0 ok, 1 check failed, 2 error).
use std::process::ExitCode;

fn main() -> ExitCode {
    gc_assist::cli::main()
}
