//! The planner: turns scoring requests into packed batches of segments.
//!
//! Requests are inserted into a prefix tree over their input token sequences (so lm-eval's tokenisation
//! split is respected: the shared prefix is whatever the token sequences share). Each tree node is a
//! segment: a run of tokens with one parent. A primer shared by every question (TruthfulQA's 6-shot
//! prompt), each question's context and each choice become segments, and each is computed once.
//!
//! Segments are packed in depth-first order into batches of at most `max_batch_tokens` tokens, with no
//! padding. A segment whose descendants land in a later batch keeps its K/V rows in the cache until its
//! last descendant has run; in depth-first order the cache never holds more than one root-to-leaf path.
//!
//! With `sharing = false` every request gets its own chain of segments (the reference harness's
//! per-request method, packed): the equivalence tests compare the two.

use crate::backend::{AttnSegment, BatchLayout};
use crate::error::{Error, Result};
use crate::model::CacheUpdate;

/// A tokenised (context, continuation) pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

/// One scored token: `row` of the batch predicts `token` for `request`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub row: u32,
    pub token: u32,
    pub request: u32,
}

#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub tokens: Vec<u32>,
    pub layout: BatchLayout,
    pub cache: CacheUpdate,
    pub targets: Vec<Target>,
}

#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub batches: Vec<Batch>,
    pub num_requests: usize,
    /// Sum of context + continuation lengths over all requests (what per-request scoring would run).
    pub naive_tokens: usize,
    /// Tokens actually run through the model.
    pub computed_tokens: usize,
    /// Distinct rows that go through the LM head.
    pub scored_rows: usize,
    /// Largest number of rows the K/V cache holds at once.
    pub peak_cache_rows: usize,
}

impl Plan {
    pub fn sharing_ratio(&self) -> f64 {
        self.naive_tokens as f64 / self.computed_tokens.max(1) as f64
    }
}

/// The model input of a request after lm-eval's truncation: `(ctx + cont)[-(max_len+1):][:-1]`, and how many
/// of its last positions are scored.
pub fn model_input(r: &Request, max_len: usize) -> Result<(Vec<u32>, usize)> {
    let n = r.continuation.len();
    if r.context.is_empty() {
        return Err(Error::invalid(
            "empty context: lm-eval scores an empty context after <|endoftext|>, so pass context_ids [0]",
        ));
    }
    if n == 0 {
        return Err(Error::invalid("empty continuation: there is nothing to score"));
    }
    if n > max_len {
        return Err(Error::invalid(format!(
            "continuation of {n} tokens is longer than the {max_len}-token context window"
        )));
    }
    let whole: Vec<u32> = r.context.iter().chain(&r.continuation).copied().collect();
    let seq = &whole[whole.len().saturating_sub(max_len.saturating_add(1))..];
    Ok((seq[..seq.len() - 1].to_vec(), n))
}

struct Node {
    tokens: Vec<u32>,
    parent: Option<usize>,
    children: Vec<usize>,
    /// Position of the first token (= parent's end position).
    start_pos: usize,
    batch: usize,
    /// Row of the first token in its batch.
    row: usize,
}

struct Tree {
    nodes: Vec<Node>,
    roots: Vec<usize>,
}

impl Tree {
    fn add_node(&mut self, parent: Option<usize>, tokens: Vec<u32>, start_pos: usize) -> usize {
        let id = self.nodes.len();
        self.nodes.push(Node {
            tokens,
            parent,
            children: vec![],
            start_pos,
            batch: 0,
            row: 0,
        });
        match parent {
            Some(p) => self.nodes[p].children.push(id),
            None => self.roots.push(id),
        }
        id
    }

    /// Split node `id` after `at` tokens; the tail becomes its only child.
    fn split(&mut self, id: usize, at: usize) {
        let tail = self.nodes[id].tokens.split_off(at);
        let children = std::mem::take(&mut self.nodes[id].children);
        let start = self.nodes[id].start_pos + at;
        let t = self.nodes.len();
        self.nodes.push(Node {
            tokens: tail,
            parent: Some(id),
            children: children.clone(),
            start_pos: start,
            batch: 0,
            row: 0,
        });
        for c in children {
            self.nodes[c].parent = Some(t);
        }
        self.nodes[id].children = vec![t];
    }

    /// Insert a token sequence, sharing the longest common prefix with what is there (if `share`).
    fn insert(&mut self, seq: &[u32], share: bool) {
        let mut parent: Option<usize> = None;
        let mut i = 0;
        while i < seq.len() {
            let siblings = match parent {
                Some(p) => &self.nodes[p].children,
                None => &self.roots,
            };
            let next = if share {
                siblings.iter().copied().find(|&c| self.nodes[c].tokens[0] == seq[i])
            } else {
                None
            };
            let Some(node) = next else {
                self.add_node(parent, seq[i..].to_vec(), i);
                return;
            };
            let common = self.nodes[node].tokens.iter().zip(&seq[i..]).take_while(|(a, b)| a == b).count();
            if common < self.nodes[node].tokens.len() && i + common < seq.len() {
                self.split(node, common);
            }
            i += common;
            parent = Some(node);
        }
    }

    /// Nodes in depth-first pre-order.
    fn dfs(&self) -> Vec<usize> {
        let mut order = Vec::with_capacity(self.nodes.len());
        let mut stack: Vec<usize> = self.roots.iter().rev().copied().collect();
        while let Some(n) = stack.pop() {
            order.push(n);
            stack.extend(self.nodes[n].children.iter().rev());
        }
        order
    }
}

/// Build the plan for `requests` under a token budget per batch.
pub fn build(requests: &[Request], max_len: usize, max_batch_tokens: usize, sharing: bool) -> Result<Plan> {
    if max_batch_tokens == 0 {
        return Err(Error::invalid("--max-batch-tokens must be at least 1"));
    }
    let mut tree = Tree {
        nodes: vec![],
        roots: vec![],
    };
    // Per request: the (node, offset) of each scored position and its target token.
    let mut scored: Vec<Vec<((usize, usize), u32)>> = Vec::with_capacity(requests.len());
    let mut inputs = Vec::with_capacity(requests.len());
    let mut naive_tokens = 0;
    for (i, r) in requests.iter().enumerate() {
        let (input, n) = model_input(r, max_len).map_err(|e| Error::invalid(format!("request {i}: {e}")))?;
        naive_tokens += r.context.len() + r.continuation.len();
        tree.insert(&input, sharing);
        inputs.push((input, n));
    }
    // Later inserts split nodes, so positions are resolved once the tree is final: each request's input is
    // a root-to-node path, walked again without inserting.
    for (i, (r, (input, n))) in requests.iter().zip(&inputs).enumerate() {
        let at = locate(&tree, input, sharing, i);
        let cont = &r.continuation[r.continuation.len() - n..];
        scored.push((0..*n).map(|j| (at[input.len() - n + j], cont[j])).collect());
    }
    split_long_nodes(&mut tree, max_batch_tokens);
    // Re-resolve after splitting long nodes: (node, offset) may now live in a child piece.
    let scored: Vec<Vec<((usize, usize), u32)>> = scored
        .into_iter()
        .map(|v| v.into_iter().map(|((n, o), t)| (resolve_piece(&tree, n, o), t)).collect())
        .collect();

    // Pack nodes in depth-first order.
    let order = tree.dfs();
    let (mut batch, mut used) = (0usize, 0usize);
    for &n in &order {
        let len = tree.nodes[n].tokens.len();
        if used > 0 && used + len > max_batch_tokens {
            batch += 1;
            used = 0;
        }
        tree.nodes[n].batch = batch;
        tree.nodes[n].row = used;
        used += len;
    }
    let num_batches = if order.is_empty() { 0 } else { batch + 1 };
    // last_use[n] = the latest batch holding n or a descendant (children come after parents in DFS order,
    // so a reverse pass sees every child before its parent).
    let mut last_use: Vec<usize> = tree.nodes.iter().map(|n| n.batch).collect();
    for &n in order.iter().rev() {
        if let Some(p) = tree.nodes[n].parent {
            last_use[p] = last_use[p].max(last_use[n]);
        }
    }

    let mut batches: Vec<Batch> = (0..num_batches).map(|_| Batch::default()).collect();
    for &n in &order {
        let b = &mut batches[tree.nodes[n].batch];
        b.tokens.extend_from_slice(&tree.nodes[n].tokens);
        b.layout
            .positions
            .extend((0..tree.nodes[n].tokens.len()).map(|o| (tree.nodes[n].start_pos + o) as u32));
    }
    // Walk the batches, tracking the cache contents as an ordered list of (node, rows).
    let mut cache: Vec<(usize, usize)> = vec![];
    let mut peak_cache_rows = 0;
    let mut order_iter = order.iter().peekable();
    for (bi, batch) in batches.iter_mut().enumerate() {
        let past_len: usize = cache.iter().map(|c| c.1).sum();
        batch.layout.past_len = past_len;
        let cache_row = |node: usize, cache: &[(usize, usize)]| -> Option<usize> {
            let mut off = 0;
            for &(c, len) in cache {
                if c == node {
                    return Some(off);
                }
                off += len;
            }
            None
        };
        let mut appended = vec![];
        while let Some(&&n) = order_iter.peek() {
            if tree.nodes[n].batch != bi {
                break;
            }
            order_iter.next();
            let node = &tree.nodes[n];
            // Ancestors root first, each either in the cache or earlier in this batch.
            let mut chain = vec![];
            let mut a = node.parent;
            while let Some(p) = a {
                chain.push(p);
                a = tree.nodes[p].parent;
            }
            chain.reverse();
            let ancestors = chain
                .iter()
                .map(|&p| {
                    let pn = &tree.nodes[p];
                    let start = if pn.batch == bi {
                        past_len + pn.row
                    } else {
                        cache_row(p, &cache).expect("planner invariant: an ancestor from an earlier batch is cached")
                    };
                    (start as u32, pn.tokens.len() as u32)
                })
                .collect();
            batch.layout.segments.push(AttnSegment {
                q_start: node.row as u32,
                q_len: node.tokens.len() as u32,
                ancestors,
            });
            if last_use[n] > bi {
                appended.push(n);
            }
        }
        // Cache after this batch: entries still needed by a later batch, then this batch's new entries.
        let mut retain = vec![];
        let mut new_cache = vec![];
        let mut off = 0;
        for &(c, len) in &cache {
            if last_use[c] > bi {
                retain.extend((off..off + len).map(|r| r as u32));
                new_cache.push((c, len));
            }
            off += len;
        }
        let mut append = vec![];
        for n in appended {
            let node = &tree.nodes[n];
            append.extend((node.row..node.row + node.tokens.len()).map(|r| r as u32));
            new_cache.push((n, node.tokens.len()));
        }
        batch.cache = CacheUpdate { retain, append };
        peak_cache_rows = peak_cache_rows.max(past_len).max(new_cache.iter().map(|c| c.1).sum::<usize>());
        cache = new_cache;
    }

    let mut distinct_rows = std::collections::HashSet::new();
    for (ri, targets) in scored.iter().enumerate() {
        for &((n, o), token) in targets {
            let node = &tree.nodes[n];
            distinct_rows.insert((n, o));
            batches[node.batch].targets.push(Target {
                row: (node.row + o) as u32,
                token,
                request: ri as u32,
            });
        }
    }
    Ok(Plan {
        batches,
        num_requests: requests.len(),
        naive_tokens,
        computed_tokens: tree.nodes.iter().map(|n| n.tokens.len()).sum(),
        scored_rows: distinct_rows.len(),
        peak_cache_rows,
    })
}

/// (node, offset) of every position of `input`, which is already in the tree.
fn locate(tree: &Tree, input: &[u32], sharing: bool, request: usize) -> Vec<(usize, usize)> {
    // Without sharing, request i's chain starts at root i and is never split (no two requests share a node).
    let mut node = if sharing {
        *tree.roots.iter().find(|&&r| tree.nodes[r].tokens[0] == input[0]).expect("inserted")
    } else {
        tree.roots[request]
    };
    let mut at = Vec::with_capacity(input.len());
    let mut i = 0;
    loop {
        let len = tree.nodes[node].tokens.len().min(input.len() - i);
        at.extend((0..len).map(|o| (node, o)));
        i += len;
        if i == input.len() {
            return at;
        }
        node = *tree.nodes[node]
            .children
            .iter()
            .find(|&&c| tree.nodes[c].tokens[0] == input[i])
            .expect("inserted");
    }
}

/// Split every node longer than `max` tokens into a chain of pieces of at most `max` tokens, so every batch
/// respects the budget. The head keeps the node id; later pieces are new nodes.
fn split_long_nodes(tree: &mut Tree, max: usize) {
    let mut i = 0;
    while i < tree.nodes.len() {
        if tree.nodes[i].tokens.len() > max {
            tree.split(i, max);
        }
        i += 1;
    }
}

/// After `split_long_nodes`, offset `o` of original node `n` lives in one of its pieces.
fn resolve_piece(tree: &Tree, mut n: usize, mut o: usize) -> (usize, usize) {
    while o >= tree.nodes[n].tokens.len() {
        o -= tree.nodes[n].tokens.len();
        n = tree.nodes[n].children[0];
    }
    (n, o)
}
