//! `tributary-dev`: embedded Kafka, load generator and demo. See `--help`.

use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tributary_devkit::cli::main()
}
