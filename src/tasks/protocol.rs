//! The two evaluation protocols: how a task's documents become (context, continuation) strings and token
//! ids, and which MC2 formula is used. Everything protocol-specific is decided here, so the loaders only
//! read rows.
//!
//! | | `paper-2023` (default) | `lm-eval-0.4` |
//! |---|---|---|
//! | harness | lm-eval master, v0.3 era (before 2023-06-01), what the paper ran | lm-eval >= 0.4 YAML tasks |
//! | pair encoding | regime A: context and continuation encoded separately | regime C: trailing context whitespace moved to the continuation, joint encoding |
//! | prize `classes` | `classes.split("'")[1::2]`, the paper's parser with its apostrophe quirk | a Python list literal, parsed properly |
//! | prize continuation | `" " + class` (two leading spaces with the released data) | `"" + class` (`target_delimiter: ""`) |
//! | TruthfulQA MC2 | v0.3 formula: split at the first 0 label | fixed: `sum p[label==1] / sum p` |
//! | TruthfulQA continuation | `" " + answer` | `" " + answer` |

use crate::tokenizer::PairEncoding;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Protocol {
    /// What the paper ran (lm-eval master, spring 2023).
    #[default]
    #[value(name = "paper-2023")]
    Paper2023,
    /// Today's lm-eval (>= 0.4) definitions of the same tasks.
    #[value(name = "lm-eval-0.4")]
    LmEval04,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Paper2023 => "paper-2023",
            Protocol::LmEval04 => "lm-eval-0.4",
        }
    }

    pub fn pair_encoding(self) -> PairEncoding {
        match self {
            Protocol::Paper2023 => PairEncoding::Separate,
            Protocol::LmEval04 => PairEncoding::Joint,
        }
    }

    /// What goes between a prize task's prompt and its class: `" {}".format(choice)` in the paper's
    /// `MultipleChoiceTask`, `target_delimiter: ""` in lm-eval 0.4's `_inverse_scaling_mc_yaml`.
    pub fn prize_delimiter(self) -> &'static str {
        match self {
            Protocol::Paper2023 => " ",
            Protocol::LmEval04 => "",
        }
    }

    /// MC2 with the v0.3 split-at-first-false formula (true) or the fixed label-mask formula (false).
    pub fn mc2_split_formula(self) -> bool {
        matches!(self, Protocol::Paper2023)
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "paper-2023" => Ok(Protocol::Paper2023),
            "lm-eval-0.4" => Ok(Protocol::LmEval04),
            other => Err(format!("unknown protocol `{other}`: expected paper-2023 or lm-eval-0.4")),
        }
    }
}
