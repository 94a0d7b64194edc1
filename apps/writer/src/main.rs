//! `tributary-writer`: see `--help`. All logic lives in the `tributary_writer` library.

fn main() -> std::process::ExitCode {
    tributary_writer::app::main()
}
