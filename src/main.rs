//! The `lmscore` command line. Each subcommand is a thin shell over a library module.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod cli;

#[derive(Parser)]
#[command(
    name = "lmscore",
    version,
    about = "Fast, exact multiple-choice log-likelihood scoring of Pythia / GPT-NeoX checkpoints"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Score (context, continuation) pairs from a JSONL file: one output row per input row.
    Loglikelihood(cli::loglikelihood::Args),
    /// Evaluate a checkpoint on the study's tasks (or your own multiple-choice JSONL): acc, acc_norm (MC1/MC2 as acc).
    Score(cli::score::Args),
    /// Tables, per-run JSON, Figure 1, the paper's statistics and trend flags from a results table.
    Report(cli::report::Args),
    /// Score checkpoints x tasks into a SQLite results store: resumable, shardable, fetching from the Hub.
    Sweep(cli::sweep::Args),
    /// Merge results stores (e.g. a sweep's shards) into one: idempotent, conflicts reported.
    Merge(cli::merge::Args),
    /// CPU scoring throughput against this machine's GEMM rate (random weights, TruthfulQA-like requests).
    Bench(cli::bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Loglikelihood(args) => cli::loglikelihood::run(args),
        Command::Score(args) => cli::score::run(args),
        Command::Report(args) => cli::report::run(args),
        Command::Sweep(args) => cli::sweep::run(args),
        Command::Merge(args) => cli::merge::run(args),
        Command::Bench(args) => cli::bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
