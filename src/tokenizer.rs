//! The Pythia (GPT-NeoX-20B) BPE tokenizer through the `tokenizers` crate, and the ways lm-eval splits a
//! (context, continuation) pair into token ids. No special tokens are ever added (no BOS).

use crate::error::{Error, Result};
use std::path::Path;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Longest vocabulary entry in bytes (512 for GPT-NeoX-20B's BPE): `n` tokens cover at most
    /// `n * max_token_bytes` bytes of text.
    max_token_bytes: usize,
    /// Whether a context may be cut at a word boundary and only its tail encoded (see [`Tokenizer::with_window`]).
    cuttable: bool,
    /// Tokens of context the caller can use (the model's window); None = encode every context whole.
    window: Option<usize>,
}

/// How far before the point where a context could be cut a word boundary is looked for.
const CUT_SEARCH_BYTES: usize = 1 << 20;

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
        let max_token_bytes = inner.get_vocab(true).keys().map(|t| t.chars().count()).max().unwrap_or(1).max(1);
        // Cutting is exact for byte-level BPE behind the GPT-2 split regex when no added token holds a space
        // (see `cut_point`): true of every Pythia tokenizer. Anything else is always encoded whole.
        let byte_level = matches!(inner.get_pre_tokenizer(), Some(tokenizers::PreTokenizerWrapper::ByteLevel(_)));
        // (Pythia's added runs of 2-24 spaces cannot cover a single space between two words.)
        let covers_a_lone_space = |t: &str| t.contains(char::is_whitespace) && (t.chars().count() < 2 || !t.chars().all(char::is_whitespace));
        let spaced_added_token = inner.get_added_tokens_decoder().values().any(|t| covers_a_lone_space(&t.content));
        Ok(Tokenizer {
            inner,
            max_token_bytes,
            cuttable: byte_level && !spaced_added_token,
            window: None,
        })
    }

    /// Only the last `tokens` tokens of any context will be used (lm-eval keeps the last `max_length + 1`
    /// of context + continuation): a longer context is cut at a word boundary and only its tail encoded,
    /// so a 100 MB context costs what its window costs. The ids kept are exactly the tail of the whole
    /// encoding (the cut is where the pre-tokenizer splits anyway), so truncation gives lm-eval's result.
    pub fn with_window(mut self, tokens: usize) -> Self {
        self.window = Some(tokens);
        self
    }

    /// Where `text` may be cut so that its tail alone encodes to the same ids as the tail of the whole text,
    /// keeping at least the window: the last byte offset `p` with `text[p] == ' '` between two non-whitespace
    /// characters, at least `keep` bytes from the end. The GPT-2 split regex ends every piece before such a
    /// space (`\s+` pieces cannot end there, the others end at whitespace) and the space starts the next
    /// piece, so the pieces after `p` are the same with or without the head; BPE works within pieces, and
    /// NFC composes nothing across a space. None = encode the whole text.
    fn cut_point(&self, text: &str) -> Result<Option<usize>> {
        let Some(window) = self.window.filter(|_| self.cuttable) else {
            return Ok(None);
        };
        // x2: NFC may shorten the text a little (and margin for the continuation's joint encoding).
        let keep = window.saturating_add(2).saturating_mul(self.max_token_bytes).saturating_mul(2);
        if text.len() <= keep.saturating_add(CUT_SEARCH_BYTES) {
            return Ok(None);
        }
        let bytes = text.as_bytes();
        let is_space = |i: usize| text[i..].chars().next().is_some_and(char::is_whitespace);
        let latest = text.len() - keep;
        let earliest = latest - CUT_SEARCH_BYTES;
        for p in (earliest.max(1)..=latest).rev() {
            // ' ' is one byte, never inside a multi-byte character; the neighbours may be multi-byte.
            if bytes[p] == b' ' && !is_space(p + 1) {
                let before = text[..p].chars().next_back();
                if before.is_some_and(|c| !c.is_whitespace()) {
                    return Ok(Some(p));
                }
            }
        }
        Err(Error::invalid(format!(
            "a context of {} bytes has no word boundary (a single space between two words) in the {} bytes before its last {keep}: \
             lmscore encodes only the tail a {window}-token window can use, and cuts only where the result is exact",
            text.len(),
            CUT_SEARCH_BYTES
        )))
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
        // A context far longer than the window: encode from an exact cut point on (same tail ids).
        let context = match self.cut_point(context)? {
            Some(p) => &context[p..],
            None => context,
        };
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

#[cfg(test)]
mod window_tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        Tokenizer::from_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/pythia-tiny/tokenizer.json")).unwrap()
    }

    /// ~1.6 MB of text with words, numbers, punctuation, runs of spaces and newlines, accents (precomposed and
    /// combining), CJK and an added token: everything the split regex and NFC treat differently.
    fn long_text(seed: u64) -> String {
        let pieces = [
            "the",
            "Quick",
            "brown",
            "fox's",
            "12345",
            "3.14",
            "--",
            "!!",
            "  ",
            "\n",
            "\n\n  ",
            "caf\u{e9}",
            "cafe\u{301}",
            "\u{4e16}\u{754c}",
            "<|endoftext|>",
            "\t",
            "don't",
            "(x)",
            "====",
            "\u{a0}",
            "e",
        ];
        let mut r = crate::testing::Rng(seed);
        let mut s = String::new();
        while s.len() < 1_600_000 {
            s.push_str(pieces[r.below(pieces.len())]);
            if r.below(3) > 0 {
                s.push(' ');
            }
        }
        s
    }

    #[test]
    fn a_cut_context_encodes_to_the_tail_of_the_whole_encoding() {
        let whole = tokenizer();
        let windowed = tokenizer().with_window(300);
        for seed in 1..3 {
            let context = long_text(seed);
            assert!(
                windowed.cut_point(&context).unwrap().is_some(),
                "the test text must be long enough to be cut"
            );
            let conts = [" answer", "  two words", "\nnext line", "x"];
            for how in [PairEncoding::Joint, PairEncoding::Separate] {
                let (full_ctx, full_conts) = whole.encode_choices(&context, &conts, how).unwrap();
                let (ctx, conts_ids) = windowed.encode_choices(&context, &conts, how).unwrap();
                assert!(
                    ctx.len() >= 300 && ctx.len() < full_ctx.len(),
                    "seed {seed}: kept {} of {}",
                    ctx.len(),
                    full_ctx.len()
                );
                assert_eq!(ctx[..], full_ctx[full_ctx.len() - ctx.len()..], "seed {seed} {how:?}: context tail");
                assert_eq!(conts_ids, full_conts, "seed {seed} {how:?}: continuations");
            }
        }
    }

    #[test]
    fn a_context_without_word_boundaries_is_refused_not_mis_cut() {
        let t = tokenizer().with_window(100);
        let err = t
            .encode_choices(&"x".repeat(3_000_000), &[" y"], PairEncoding::Joint)
            .err()
            .expect("a 3 MB word was encoded");
        assert!(err.to_string().contains("no word boundary"), "{err}");
        // Short contexts are never cut.
        assert_eq!(t.cut_point(&"x".repeat(1000)).unwrap(), None);
    }
}
