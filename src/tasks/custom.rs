//! A user's own multiple-choice task: `--tasks custom:PATH/TO/TASK.jsonl`.
//!
//! One JSON object per line:
//!
//! ```json
//! {"context": "The capital of France is", "choices": ["Paris", "Rome"], "gold": 0}
//! {"context": "2 + 2 =", "choices": ["4", "5"], "gold": 0, "delimiter": " "}
//! ```
//!
//! - `context` (string): scored as is. An empty context is scored after `<|endoftext|>` (as lm-eval does).
//! - `choices` (non-empty list of strings) and `gold` (0-based index of the right choice).
//! - `delimiter` (optional string, default `" "`): the continuation is `delimiter + choice`, lm-eval's
//!   `target_delimiter`. Use `""` when the choices carry their own leading space.
//!
//! The protocol decides the token split (`paper-2023`: context and continuation encoded separately;
//! `lm-eval-0.4`: joint encoding). Metrics: `acc` and `acc_norm` (log-likelihood divided by the choice's
//! length in Unicode code points, without the delimiter). Blank lines are ignored; a bad row is an error
//! naming its line, or is skipped and counted with `--skip-bad-rows`. The task's name is `custom:PATH` as
//! given.

use super::prize::{build_doc, RawDoc};
use super::{LoadedTask, Protocol, Scoring};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use serde_json::Value;
use std::path::Path;

pub const DEFAULT_DELIMITER: &str = " ";

fn parse_row(line: &str) -> std::result::Result<(String, Vec<String>, usize, String), String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    let obj = v.as_object().ok_or("expected a JSON object with `context`, `choices` and `gold`")?;
    let context = match obj.get("context") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("`context` must be a string".into()),
        None => return Err("missing `context` (expected keys `context`, `choices`, `gold`, optional `delimiter`)".into()),
    };
    let choices = match obj.get("choices") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or("`choices` must be a list of strings")?,
        Some(_) => return Err("`choices` must be a list of strings".into()),
        None => return Err("missing `choices` (expected keys `context`, `choices`, `gold`, optional `delimiter`)".into()),
    };
    if choices.is_empty() {
        return Err("`choices` is empty".into());
    }
    let gold = match obj.get("gold") {
        Some(x) => x.as_u64().ok_or_else(|| format!("`gold` must be a non-negative integer, found {x}"))? as usize,
        None => return Err("missing `gold` (the 0-based index of the right choice)".into()),
    };
    if gold >= choices.len() {
        return Err(format!("`gold` {gold} is out of range for {} choices", choices.len()));
    }
    let delimiter = match obj.get("delimiter") {
        None => DEFAULT_DELIMITER.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("`delimiter` must be a string".into()),
    };
    Ok((context, choices, gold, delimiter))
}

pub fn load(name: &str, path: &Path, protocol: Protocol, tokenizer: &Tokenizer, skip_bad_rows: bool) -> Result<LoadedTask> {
    if !path.exists() {
        return Err(Error::file(
            path,
            format!("custom task file not found (task `{name}`; expected JSONL rows {{\"context\", \"choices\", \"gold\"}})"),
        ));
    }
    let (docs, skipped) = super::read_jsonl_rows(path, skip_bad_rows, |line, text| {
        let (context, choices, gold, delim) = parse_row(text)?;
        build_doc(
            RawDoc {
                line,
                context,
                choices,
                gold,
                labels: vec![],
            },
            &delim,
            protocol.pair_encoding(),
            tokenizer,
        )
    })?;
    if docs.is_empty() {
        return Err(Error::file(path, format!("no usable rows ({skipped} skipped as malformed)")));
    }
    Ok(LoadedTask {
        name: name.to_string(),
        protocol,
        source: path.to_path_buf(),
        scoring: Scoring::Choice,
        docs,
        skipped_rows: skipped,
        plan_group: name.to_string(),
    })
}
