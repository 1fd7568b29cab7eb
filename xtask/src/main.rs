//! `cargo xtask <task>`: everything a developer or CI runs besides plain cargo.
mod bench;
mod demo;
mod package;
mod setup;
mod test;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "vfsdr project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (Debian packages, nightly rust-src, bpf-linker).
    Setup,
    /// Set up, build, and run the lab demo: a site with a volume, the agent, a writer, live status.
    Demo(demo::Args),
    /// Set up, build, and run every test: unit tests, then the root lab tests.
    Test(test::Args),
    /// Build the .deb and .rpm packages into target/packages.
    Package,
    /// Benchmarks; results go to bench/results/.
    Bench(Box<bench::Args>),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Demo(args) => demo::run(args),
        Task::Test(args) => test::run(args),
        Task::Package => package::run(),
        Task::Bench(args) => bench::run(*args),
    }
}
