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
    /// Regime C (lm-eval >= 0.4): move the context's trailing whitespace to the continuation, encode
    /// context+continuation, split at the context's token count.
    Joint,
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::file(path, "tokenizer.json not found"));
        }
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| Error::file(path, format!("not a valid tokenizer.json: {e}")))?;
        Ok(Tokenizer { inner })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::invalid(format!("tokenizer failed on {text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn encode_pair(&self, context: &str, continuation: &str, how: PairEncoding) -> Result<(Vec<u32>, Vec<u32>)> {
        match how {
            PairEncoding::Separate => {
                let ctx = if context.is_empty() { vec![0] } else { self.encode(context)? };
                Ok((ctx, self.encode(continuation)?))
            }
            PairEncoding::Joint => {
                let trimmed = context.trim_end();
                let moved = &context[trimmed.len()..];
                let continuation = format!("{moved}{continuation}");
                let whole = self.encode(&format!("{trimmed}{continuation}"))?;
                let n_ctx = self.encode(trimmed)?.len();
                let (ctx, cont) = whole.split_at(n_ctx.min(whole.len()));
                // lm-eval: an empty context is scored after <|endoftext|>.
                let ctx = if ctx.is_empty() { vec![0] } else { ctx.to_vec() };
                Ok((ctx, cont.to_vec()))
            }
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
