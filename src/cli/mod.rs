//! Subcommand implementations: argument structs and the glue from arguments to library calls.

pub mod bench;
pub mod loglikelihood;
pub mod merge;
pub mod report;
pub mod score;
pub mod sweep;
