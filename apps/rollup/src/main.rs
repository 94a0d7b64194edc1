//! `tributary-rollup`: see `--help`. All logic lives in the `tributary` library.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tributary::app::main(tributary::config::AppKind::Rollup)
}
