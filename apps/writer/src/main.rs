//! `tributary-writer`: see `--help`. All logic lives in the `tributary_writer` library.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tributary_writer::app::main()
}
