//! `cargo run --bin loadtest`: goose load scenarios against a running
//! wsnotify. The scenarios (chatters, listeners, publishers, reconnect
//! storm) are the subject of the benchmarks issue and are not written yet;
//! until then this binary says so and exits non-zero rather than pretend.

fn main() -> std::process::ExitCode {
    eprintln!(
        "loadtest: the goose scenarios are not implemented yet (see the benchmarks issue); \
         nothing was run"
    );
    std::process::ExitCode::from(2)
}
