//! lmscore: teacher-forced multiple-choice scoring of Pythia / GPT-NeoX checkpoints.
//!
//! Data flow (one direction, one module per stage):
//! checkpoint -> model (weights on a backend) -> tasks/protocol -> requests -> plan (prefix tree, packed
//! batches) -> forward over each batch -> fused log-softmax gather on scored rows -> per-request scores
//! -> metrics -> results store and reports.

pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod engine;
pub mod error;
pub mod hub;
pub mod lm_eval;
pub mod model;
pub mod output;
pub mod plan;
pub mod report;
pub mod score;
pub mod stats;
pub mod store;
pub mod sweep;
pub mod tasks;
pub mod testing;
pub mod tokenizer;

pub use error::{Error, Result};
