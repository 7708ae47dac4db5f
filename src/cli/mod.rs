//! Subcommand implementations: argument structs and the glue from arguments to library calls.

pub mod loglikelihood;
pub mod report;
pub mod score;
pub mod merge;
pub mod sweep;
