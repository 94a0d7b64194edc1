//! `tributary-writer`: the token-aware, rate-limited Cassandra/ScyllaDB writer. Not built
//! yet; it exits with a clear message rather than pretending to write.

fn main() -> std::process::ExitCode {
    eprintln!("tributary-writer: not implemented yet (see the open writer issue)");
    std::process::ExitCode::from(2)
}
