//! `tributary-dev`: embedded Kafka, load generator and demo. See `--help`.

use std::process::ExitCode;

fn main() -> ExitCode {
    tributary_devkit::cli::main()
}
