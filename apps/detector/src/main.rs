//! `tributary-detector`: see `--help`. All logic lives in the `tributary` library.

fn main() -> std::process::ExitCode {
    tributary::app::main(tributary::config::AppKind::Detector)
}
