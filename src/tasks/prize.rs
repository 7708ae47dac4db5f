//! The Inverse Scaling Prize classification tasks: the official release JSONL
//! (`{"prompt": str, "classes": str | [str], "answer_index": int, "round": int, "part": int}`).
//!
//! `classes` is a STRING holding a Python list repr in the release (`"[' heavy.', ' fonder.']"`), a real
//! JSON list in some Hub copies; both are accepted.
//! - `paper-2023`: choices = `classes.split("'")[1::2]`, the paper's parser, verbatim, including its quirk
//!   on classes that contain an apostrophe (Python's repr writes those with double quotes, so the parser
//!   mangles them: `"[' proceed.', \" don't.\"]"` gives `[' proceed.', 't."]']`). A real list is first
//!   written as Python's `repr(list)` would write it (the release's own format), so the same data gives
//!   the same choices either way.
//! - `lm-eval-0.4`: choices = the list itself; a string is parsed as a Python list literal
//!   (`ast.literal_eval` for lists of strings).
//!
//! Context = `prompt` exactly; continuation = protocol delimiter + choice (`" "` for the paper, `""` for
//! lm-eval 0.4); gold = `answer_index`.

use super::hub::{DataFile, HubSource, HUB_REVISION};
use super::{Doc, Protocol};
use crate::error::{Error, Result};
use crate::plan::Request;
use crate::tokenizer::{PairEncoding, Tokenizer};
use serde_json::Value;
use std::path::Path;

/// A prize task: its data file and expected size.
#[derive(Clone, Copy, Debug)]
pub struct PrizeTask {
    pub name: &'static str,
    pub data: DataFile,
    /// Rows of the official release (what the paper's runs imply); None where unknown.
    pub rows: Option<usize>,
}

const fn paper(name: &'static str, dir: &'static str, file: &'static str, sha: &'static str, rows: usize, repo: &'static str) -> PrizeTask {
    PrizeTask {
        name,
        data: DataFile {
            dir,
            file,
            sha256: Some(sha),
            hub: Some(HubSource {
                repo,
                revision: HUB_REVISION,
                split: "test",
            }),
        },
        rows: Some(rows),
    }
}

/// Every prize task lmscore knows. File names, sha256 and row counts are those of each folder's SOURCE.md;
/// the Hub datasets are those the paper loaded (`jmichaelov/inverse_scaling_prize-<task>`, split `test`),
/// used under both protocols so that both score the same data. The round-1 tasks come from the
/// `inverse-scaling/*` datasets today's lm-eval uses (split `train`).
pub const PRIZE_TASKS: [PrizeTask; 12] = [
    paper(
        "hindsight_neglect",
        "hindsight_neglect",
        "hindsight-neglect_classification.jsonl",
        "1539e144e20c760cd70980ca012d3d75744b59385bdf78cffc4d02560c4b3686",
        315,
        "jmichaelov/inverse_scaling_prize-hindsight_neglect",
    ),
    paper(
        "into_the_unknown",
        "into_the_unknown",
        "into-the-unknown_classification.jsonl",
        "74b5e1aca9e4aeedd2b6ce1686d0e5ee9cd380509d65bca37cad1ebebaecf51d",
        1824,
        "jmichaelov/inverse_scaling_prize-into_the_unknown",
    ),
    paper(
        "memo_trap",
        "memo_trap",
        "memo-trap_classification.jsonl",
        "f09aac90bf841f2eb899d23beed8c8ccad2e1d3ab4f0fd3f1ff403fd5c7e11f2",
        936,
        "jmichaelov/inverse_scaling_prize-memo_trap",
    ),
    paper(
        "modus_tollens",
        "modus_tollens",
        "modus-tollens_classification.jsonl",
        "fdf82374d7e401902f25303428678d3b540031ec81c7a7078cb3d7f346314a7d",
        1236,
        "jmichaelov/inverse_scaling_prize-modus_tollens",
    ),
    paper(
        "neqa",
        "neqa",
        "neqa_classification.jsonl",
        "50ca9dca517dcd7fcdbb6d7f750fbbdade2142c0ac2da2bd196dc27464b464e6",
        300,
        "jmichaelov/inverse_scaling_prize-neqa",
    ),
    paper(
        "pattern_matching_suppression",
        "pattern_matching_suppression",
        "pattern-matching-suppression_classification.jsonl",
        "29ff41ccc2592ecd19c8bdf8e632a394314cb7d84d21e668d9060070d95fdad0",
        1428,
        "jmichaelov/inverse_scaling_prize-pattern_matching_suppression",
    ),
    paper(
        "redefine",
        "redefine",
        "redefine_classification.jsonl",
        "4ca8573039b0f943ea773d258cea3f937a8429cf0f6f0f060c281fd8eb6d5c7c",
        1244,
        "jmichaelov/inverse_scaling_prize-redefine",
    ),
    paper(
        "repetitive_algebra",
        "repetitive_algebra",
        "repetitive-algebra_classification.jsonl",
        "c2496c285bfef9e8da82dd28026aeb35f834da1c20ea410540c82698526428f3",
        1000,
        "jmichaelov/inverse_scaling_prize-repetitive_algebra",
    ),
    paper(
        "resisting_correction",
        "resisting_correction",
        "resisting-correction_classification.jsonl",
        "0c2720f095a4272e6b1462fe774704c57db0f124c4b68f35747d76e79e5352f6",
        7344,
        "jmichaelov/inverse_scaling_prize-resisting_correction",
    ),
    paper(
        "sig_figs",
        "sig_figs",
        "sig-figs_classification.jsonl",
        "19ca4afdd2b5d0fb2608097cf747b5a4105038ea2183750796c8bf57f23e7448",
        20897,
        "jmichaelov/inverse_scaling_prize-sig_figs",
    ),
    PrizeTask {
        name: "redefine_math",
        data: DataFile {
            dir: "redefine_math",
            file: "redefine-math_classification.jsonl",
            sha256: None,
            hub: Some(HubSource {
                repo: "inverse-scaling/redefine-math",
                revision: HUB_REVISION,
                split: "train",
            }),
        },
        rows: None,
    },
    PrizeTask {
        name: "quote_repetition",
        data: DataFile {
            dir: "quote_repetition",
            file: "quote-repetition_classification.jsonl",
            sha256: None,
            hub: Some(HubSource {
                repo: "inverse-scaling/quote-repetition",
                revision: HUB_REVISION,
                split: "train",
            }),
        },
        rows: None,
    },
];

pub fn task_info(name: &str) -> Option<&'static PrizeTask> {
    PRIZE_TASKS.iter().find(|t| t.name == name)
}

/// `classes` as it appears in a row.
#[derive(Clone, Debug, PartialEq)]
pub enum Classes {
    /// A Python list repr held in a string (the official release).
    Repr(String),
    /// A real JSON list.
    List(Vec<String>),
}

/// The choices of one row under `protocol`.
pub fn parse_classes(classes: &Classes, protocol: Protocol) -> std::result::Result<Vec<String>, String> {
    match (protocol, classes) {
        (Protocol::Paper2023, Classes::Repr(s)) => Ok(paper_split(s)),
        (Protocol::Paper2023, Classes::List(v)) => Ok(paper_split(&py_repr_list(v))),
        (Protocol::LmEval04, Classes::Repr(s)) => parse_py_str_list(s),
        (Protocol::LmEval04, Classes::List(v)) => Ok(v.clone()),
    }
}

/// The paper's parser: `classes.split("'")[1::2]`.
pub fn paper_split(classes: &str) -> Vec<String> {
    classes.split('\'').skip(1).step_by(2).map(str::to_string).collect()
}

/// Python's `repr(list_of_str)`: `['a', "b'c"]`.
pub fn py_repr_list(items: &[String]) -> String {
    let parts: Vec<String> = items.iter().map(|s| py_repr_str(s)).collect();
    format!("[{}]", parts.join(", "))
}

/// Python's `repr(str)`: single quotes unless the string holds a `'` and no `"`; backslash, the quote,
/// `\t \n \r` and non-printable characters escaped. "Non-printable" follows `str.isprintable` for control,
/// format, separator (other than space), surrogate and private-use characters; unassigned code points are
/// not detected (they do not occur in these datasets).
pub fn py_repr_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !py_printable(c) => {
                let n = c as u32;
                if n < 0x100 {
                    out.push_str(&format!("\\x{n:02x}"));
                } else if n < 0x10000 {
                    out.push_str(&format!("\\u{n:04x}"));
                } else {
                    out.push_str(&format!("\\U{n:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

fn py_printable(c: char) -> bool {
    let n = c as u32;
    !matches!(n,
        0x00..=0x1f | 0x7f..=0xa0 | 0xad
        | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x890..=0x891 | 0x8e2 | 0x1680 | 0x180e
        | 0x2000..=0x200f | 0x2028..=0x202f | 0x205f..=0x2064 | 0x2066..=0x206f | 0x3000
        | 0xe000..=0xf8ff | 0xfeff | 0xfff9..=0xfffb | 0x110bd | 0x110cd | 0x13430..=0x1343f
        | 0x1bca0..=0x1bca3 | 0x1d173..=0x1d17a | 0xe0001 | 0xe0020..=0xe007f
        | 0xf0000..=0xffffd | 0x100000..=0x10fffd)
}

/// `ast.literal_eval` for a list of string literals: `['a', "b", '''c''', r'd\e', 'f' 'g',]`. Escapes
/// `\\ \' \" \a \b \f \n \r \t \v \ooo \xhh \uhhhh \Uhhhhhhhh` and line continuations; an unknown escape is
/// kept as written (as Python does). Anything but a list of strings is an error.
pub fn parse_py_str_list(src: &str) -> std::result::Result<Vec<String>, String> {
    let chars: Vec<char> = src.chars().collect();
    let mut i = 0;
    let ws = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    ws(&mut i);
    if chars.get(i) != Some(&'[') {
        return Err(format!("expected a Python list of strings such as ['a', 'b'], found {src:?}"));
    }
    i += 1;
    let mut items = vec![];
    loop {
        ws(&mut i);
        match chars.get(i) {
            Some(']') => {
                i += 1;
                break;
            }
            None => return Err(format!("unterminated list (no closing `]`) in {src:?}")),
            _ => {}
        }
        // One item: one or more adjacent string literals (Python concatenates them).
        let mut item = parse_py_string(&chars, &mut i).map_err(|e| format!("{e} in {src:?}"))?;
        loop {
            ws(&mut i);
            if matches!(chars.get(i), Some('\'' | '"' | 'r' | 'R' | 'u' | 'U')) {
                item.push_str(&parse_py_string(&chars, &mut i).map_err(|e| format!("{e} in {src:?}"))?);
            } else {
                break;
            }
        }
        items.push(item);
        match chars.get(i) {
            Some(',') => i += 1,
            Some(']') => {
                i += 1;
                break;
            }
            Some(c) => return Err(format!("expected `,` or `]` after a list item, found `{c}` in {src:?}")),
            None => return Err(format!("unterminated list (no closing `]`) in {src:?}")),
        }
    }
    ws(&mut i);
    if i < chars.len() {
        return Err(format!("unexpected text after the list's closing `]` in {src:?}"));
    }
    Ok(items)
}

fn parse_py_string(c: &[char], i: &mut usize) -> std::result::Result<String, String> {
    let mut raw = false;
    while let Some(p) = c.get(*i) {
        match p {
            'r' | 'R' => raw = true,
            'u' | 'U' => {}
            '\'' | '"' => break,
            other => return Err(format!("expected a string literal, found `{other}`")),
        }
        *i += 1;
    }
    let q = *c.get(*i).ok_or("expected a string literal, found the end of the text")?;
    let triple = c.get(*i + 1) == Some(&q) && c.get(*i + 2) == Some(&q);
    *i += if triple { 3 } else { 1 };
    let mut out = String::new();
    loop {
        let Some(&ch) = c.get(*i) else {
            return Err("unterminated string literal".into());
        };
        if ch == q && (!triple || (c.get(*i + 1) == Some(&q) && c.get(*i + 2) == Some(&q))) {
            *i += if triple { 3 } else { 1 };
            return Ok(out);
        }
        if ch == '\n' && !triple {
            return Err("newline inside a single-quoted string literal".into());
        }
        if ch != '\\' {
            out.push(ch);
            *i += 1;
            continue;
        }
        let Some(&e) = c.get(*i + 1) else {
            return Err("unterminated string literal".into());
        };
        if raw {
            // A raw string keeps the backslash; it still protects the next character from ending the string.
            out.push('\\');
            out.push(e);
            *i += 2;
            continue;
        }
        *i += 2;
        match e {
            '\n' => {}
            '\\' => out.push('\\'),
            '\'' => out.push('\''),
            '"' => out.push('"'),
            'a' => out.push('\x07'),
            'b' => out.push('\x08'),
            'f' => out.push('\x0c'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'v' => out.push('\x0b'),
            '0'..='7' => {
                let mut n = e.to_digit(8).unwrap();
                for _ in 0..2 {
                    match c.get(*i).and_then(|d| d.to_digit(8)) {
                        Some(d) => {
                            n = n * 8 + d;
                            *i += 1;
                        }
                        None => break,
                    }
                }
                out.push(char::from_u32(n).ok_or("invalid octal escape")?);
            }
            'x' | 'u' | 'U' => {
                let len = match e {
                    'x' => 2,
                    'u' => 4,
                    _ => 8,
                };
                let hex: String = c.get(*i..*i + len).ok_or(format!("truncated \\{e} escape"))?.iter().collect();
                let n = u32::from_str_radix(&hex, 16).map_err(|_| format!("invalid \\{e} escape `\\{e}{hex}`"))?;
                out.push(char::from_u32(n).ok_or(format!("\\{e}{hex} is not a valid character"))?);
                *i += len;
            }
            'N' => return Err("\\N{...} escapes are not supported".into()),
            other => {
                out.push('\\');
                out.push(other);
            }
        }
    }
}

/// One row of the release format, checked. `Err` is the message for a bad row.
pub fn parse_row(line: &str, protocol: Protocol) -> std::result::Result<(String, Vec<String>, usize), String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    let obj = v
        .as_object()
        .ok_or("expected a JSON object with `prompt`, `classes` and `answer_index`")?;
    let prompt = match obj.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("`prompt` must be a string".into()),
        None => return Err("missing `prompt` (expected keys `prompt`, `classes`, `answer_index`)".into()),
    };
    let classes = match obj.get("classes") {
        Some(Value::String(s)) => Classes::Repr(s.clone()),
        Some(Value::Array(a)) => Classes::List(
            a.iter()
                .map(|x| x.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or("`classes` must be a list of strings or a string holding a Python list")?,
        ),
        Some(_) => return Err("`classes` must be a list of strings or a string holding a Python list".into()),
        None => return Err("missing `classes` (expected keys `prompt`, `classes`, `answer_index`)".into()),
    };
    let answer = match obj.get("answer_index") {
        Some(x) => x
            .as_u64()
            .ok_or_else(|| format!("`answer_index` must be a non-negative integer, found {x}"))?,
        None => return Err("missing `answer_index` (expected keys `prompt`, `classes`, `answer_index`)".into()),
    };
    let choices = parse_classes(&classes, protocol).map_err(|e| format!("unparsable `classes`: {e}"))?;
    if choices.is_empty() {
        return Err(match classes {
            Classes::Repr(s) => format!("`classes` gives no choices (parsed {s:?} with the {protocol} parser)"),
            Classes::List(_) => "`classes` is an empty list".into(),
        });
    }
    if answer as usize >= choices.len() {
        return Err(format!(
            "`answer_index` {answer} is out of range for {} choices {choices:?}",
            choices.len()
        ));
    }
    Ok((prompt, choices, answer as usize))
}

/// A document before tokenisation.
#[derive(Clone, Debug)]
pub struct RawDoc {
    pub line: usize,
    pub context: String,
    pub choices: Vec<String>,
    pub gold: usize,
    pub labels: Vec<u8>,
}

/// Build one doc's requests: continuation = `delimiter + choice`.
pub fn build_doc(raw: RawDoc, delimiter: &str, how: PairEncoding, tokenizer: &Tokenizer) -> std::result::Result<Doc, String> {
    let RawDoc {
        line,
        context,
        choices,
        gold,
        labels,
    } = raw;
    let continuations: Vec<String> = choices.iter().map(|c| format!("{delimiter}{c}")).collect();
    for (i, cont) in continuations.iter().enumerate() {
        if cont.is_empty() {
            return Err(format!("choice {i} is empty and the delimiter is empty: there is nothing to score"));
        }
    }
    // Regime A encodes each string on its own; regime C (lm-eval >= 0.4 `_encode_pair`) is in `Tokenizer::encode_choices`.
    let (ctx_ids, cont_ids) = tokenizer.encode_choices(&context, &continuations, how).map_err(|e| e.to_string())?;
    let mut requests = Vec::with_capacity(choices.len());
    for (i, (cont, continuation)) in continuations.iter().zip(cont_ids).enumerate() {
        if continuation.is_empty() {
            return Err(format!(
                "choice {i} ({cont:?}) has no tokens of its own: the joint encoding merges it into the context's last token \
                 (lm-eval 0.4 would score it as log-likelihood 0); use a delimiter such as \" \""
            ));
        }
        requests.push(Request {
            context: ctx_ids.clone(),
            continuation,
        });
    }
    Ok(Doc {
        line,
        context,
        choices,
        continuations,
        gold,
        labels,
        requests,
    })
}

/// Read a release-format JSONL file. Bad rows fail with file and line, or are skipped and counted.
pub fn load_file(path: &Path, protocol: Protocol, tokenizer: &Tokenizer, skip_bad_rows: bool) -> Result<(Vec<Doc>, usize)> {
    let (docs, skipped) = super::read_jsonl_rows(path, skip_bad_rows, |line, text| {
        let (prompt, choices, gold) = parse_row(text, protocol)?;
        let raw = RawDoc {
            line,
            context: prompt,
            choices,
            gold,
            labels: vec![],
        };
        build_doc(raw, protocol.prize_delimiter(), protocol.pair_encoding(), tokenizer)
    })?;
    if docs.is_empty() {
        return Err(Error::file(path, format!("no usable rows ({skipped} skipped as malformed)")));
    }
    if skipped > 0 {
        eprintln!("warning: {}: skipped {skipped} malformed row(s)", path.display());
    }
    Ok((docs, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_split_quirk() {
        assert_eq!(paper_split("[' heavy.', ' fonder.']"), vec![" heavy.", " fonder."]);
        assert_eq!(paper_split("[' proceed.', \" don't.\"]"), vec![" proceed.", "t.\"]"]);
    }

    #[test]
    fn repr_roundtrip() {
        let v = vec![" proceed.".to_string(), " don't.".to_string(), "a\"b'c\\\n\u{a0}é".to_string()];
        let r = py_repr_list(&v);
        assert_eq!(r, "[' proceed.', \" don't.\", 'a\"b\\'c\\\\\\n\\xa0é']");
        assert_eq!(parse_py_str_list(&r).unwrap(), v);
        assert_eq!(paper_split(&py_repr_list(&v[..2])), vec![" proceed.", "t.\"]"]);
    }

    #[test]
    fn literal_parser() {
        assert_eq!(
            parse_py_str_list(" [ 'a' , \"b\" 'c', '''d''', r'\\e', '\\u00e9\\x41\\101',] ").unwrap(),
            vec!["a", "bc", "d", "\\e", "éAA"]
        );
        assert_eq!(parse_py_str_list("[]").unwrap(), Vec::<String>::new());
        assert!(parse_py_str_list("['a', 1]").is_err());
        assert!(parse_py_str_list("['a'").is_err());
        assert!(parse_py_str_list("'a'").is_err());
        assert!(parse_py_str_list("['a'] x").is_err());
    }
}
