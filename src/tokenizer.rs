//! The Pythia (GPT-NeoX-20B) BPE tokenizer through the `tokenizers` crate, and the ways lm-eval splits a
//! (context, continuation) pair into token ids. No special tokens are ever added (no BOS).

use crate::error::{Error, Result};
use std::path::Path;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

/// How a (context, continuation) pair becomes two id lists (see docs in task-spec §1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairEncoding {
    /// Regime A (lm-eval before 2023-06, the paper): encode each string on its own.
    Separate,
    /// Regime C (lm-eval >= 0.4): move the context's trailing whitespace to the continuation; the
    /// continuation is what enc(context + continuation) has beyond enc(context)'s length.
    Joint,
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::file(path, "tokenizer.json not found"));
        }
        let bytes = crate::error::read_bounded(path, crate::error::MAX_METADATA_BYTES)?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| Error::file(path, format!("not a valid tokenizer.json: {e}")))?;
        Ok(Tokenizer { inner })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::invalid(format!("tokenizer failed on {text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn encode_pair(&self, context: &str, continuation: &str, how: PairEncoding) -> Result<(Vec<u32>, Vec<u32>)> {
        let (ctx, mut conts) = self.encode_choices(context, &[continuation], how)?;
        Ok((ctx, conts.pop().unwrap_or_default()))
    }

    /// One context with several continuations: the context's ids (encoded once) and each continuation's.
    /// An empty context is scored after `<|endoftext|>` (id 0), as lm-eval does.
    pub fn encode_choices<S: AsRef<str>>(&self, context: &str, continuations: &[S], how: PairEncoding) -> Result<(Vec<u32>, Vec<Vec<u32>>)> {
        if context.is_empty() {
            let conts = continuations.iter().map(|c| self.encode(c.as_ref())).collect::<Result<_>>()?;
            return Ok((vec![0], conts));
        }
        match how {
            PairEncoding::Separate => {
                let conts = continuations.iter().map(|c| self.encode(c.as_ref())).collect::<Result<_>>()?;
                Ok((self.encode(context)?, conts))
            }
            PairEncoding::Joint => {
                // lm-eval 0.4 `_encode_pair`: the context's trailing whitespace moves to the continuation;
                // context ids = enc(context), continuation ids = enc(context + continuation)[len(context ids):].
                // (Not the head of the joint encoding: the two differ when a token spans the boundary.)
                let trimmed = py_rstrip(context);
                if trimmed.is_empty() {
                    return Err(Error::invalid(
                        "the context is only whitespace: lm-eval 0.4 would score it with no context token at all, which lmscore does not support",
                    ));
                }
                let ctx = self.encode(trimmed)?;
                let conts = continuations
                    .iter()
                    .map(|c| Ok(self.encode(&format!("{context}{}", c.as_ref()))?.get(ctx.len()..).unwrap_or(&[]).to_vec()))
                    .collect::<Result<_>>()?;
                Ok((ctx, conts))
            }
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Python's `str.rstrip()`: strips whitespace as `str.isspace` defines it (Rust's `White_Space` plus the
/// separators U+001C..U+001F).
pub fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}
