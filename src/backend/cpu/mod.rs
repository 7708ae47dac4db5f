//! The CPU backend: the oracle every CUDA kernel is checked against, and a usable engine for small models.
//!
//! f32 throughout, plain loops a reader can hold against HF `modeling_gpt_neox.py`, parallel across rows
//! with rayon. Matrix products use the `gemm` crate (blocked, SIMD, multi-threaded).

pub mod math;
pub mod profile;

use super::{check_targets, Activity, AttnShape, Backend, BatchLayout, Tensor2, TokenScore};
use crate::checkpoint::HostTensor;
use crate::error::{Error, Result};
use math::multiversion;
use profile::{scope, Op};
use rayon::prelude::*;

#[derive(Clone, Debug, PartialEq)]
pub struct CpuTensor {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl CpuTensor {
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        assert_eq!(rows * cols, data.len(), "CpuTensor [{rows}, {cols}] needs {} values", rows * cols);
        CpuTensor { rows, cols, data }
    }
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

impl Tensor2 for CpuTensor {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
}

#[derive(Clone, Debug, Default)]
pub struct Cpu;

fn check_same_shape(what: &str, a: &CpuTensor, b: &CpuTensor) -> Result<()> {
    if (a.rows, a.cols) != (b.rows, b.cols) {
        return Err(Error::invalid(format!(
            "{what}: shapes [{}, {}] and [{}, {}] differ",
            a.rows, a.cols, b.rows, b.cols
        )));
    }
    Ok(())
}

/// 1 / base^(2j / R) for j in 0..R/2, computed in f32 exactly as HF does (never the stored fp16 inv_freq).
pub fn rotary_inv_freq(rotary_ndims: usize, base: f32) -> Vec<f32> {
    (0..rotary_ndims / 2)
        .map(|j| 1.0f32 / base.powf((2 * j) as f32 / rotary_ndims as f32))
        .collect()
}

/// x [m, k], w [n, k] (PyTorch Linear layout), b [1, n] -> x w^T + b: [m, n], through the `gemm` crate.
pub fn x_wt_plus_b(x: &CpuTensor, w: &CpuTensor, b: Option<&CpuTensor>) -> Result<CpuTensor> {
    let (m, k, n) = (x.rows, x.cols, w.rows);
    if w.cols != k {
        return Err(Error::invalid(format!(
            "linear: input has {k} features, weight [{}, {}] expects {}",
            w.rows, w.cols, w.cols
        )));
    }
    if let Some(b) = b.filter(|b| b.data.len() != n) {
        return Err(Error::invalid(format!("linear: bias of {} values for {n} outputs", b.data.len())));
    }
    // Start from the broadcast bias so the GEMM accumulates onto it (dst = 1*dst + x w^T).
    let mut out = vec![0f32; m * n];
    if let Some(b) = b {
        out.par_chunks_mut(n).for_each(|row| row.copy_from_slice(&b.data));
    }
    if m > 0 {
        // SAFETY: pointers and strides describe the three row-major buffers above, which outlive the call.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                b.is_some(),
                x.data.as_ptr(),
                1,
                k as isize,
                w.data.as_ptr(),
                k as isize,
                1, // rhs = w^T: element (kk, j) = w[j, kk]
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            );
        }
    }
    Ok(CpuTensor::new(m, n, out))
}

/// Rows `first..first + count` of a row-major [_, 3h] qkv matrix (the cache or the batch): keys and values.
struct KeyBlock<'a> {
    rows: &'a [f32],
    first: usize,
    count: usize,
}

/// C[m, n] (row stride `c_rs`) = alpha C + beta A B for row-major A (row stride `a_rs`) and B given by its row
/// and column strides, single-threaded (attention runs one task per group and head in parallel).
///
/// SAFETY: the caller guarantees every element the shapes and strides address lies inside live buffers.
#[allow(clippy::too_many_arguments)]
unsafe fn small_gemm(
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    c_rs: usize,
    accumulate: bool,
    a: *const f32,
    a_rs: usize,
    b: *const f32,
    b_rs: usize,
    b_cs: usize,
    beta: f32,
) {
    gemm::gemm(
        m,
        n,
        k,
        c,
        1,
        c_rs as isize,
        accumulate,
        a,
        1,
        a_rs as isize,
        b,
        b_cs as isize,
        b_rs as isize,
        if accumulate { 1.0 } else { 0.0 },
        beta,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

/// softmax(Q K^T / sqrt(hd)) V for one head of sibling segments: each sees the shared ancestor keys
/// `ancestors` and then its own rows causally. Returns [rows, hd] for the siblings' rows in order.
fn attend_siblings(qkv: &CpuTensor, siblings: &[&crate::backend::AttnSegment], ancestors: &[KeyBlock], head: usize, hd: usize) -> Vec<f32> {
    let cols = qkv.cols;
    let (q_at, k_at, v_at) = (head * 3 * hd, head * 3 * hd + hd, head * 3 * hd + 2 * hd);
    let n_anc: usize = ancestors.iter().map(|b| b.count).sum();
    let n_q: usize = siblings.iter().map(|s| s.q_len as usize).sum();
    let stride = n_anc + siblings.iter().map(|s| s.q_len as usize).max().unwrap_or(0); // a score row
    let scale = 1.0 / (hd as f32).sqrt();
    // The siblings' query rows side by side: [n_q, hd].
    let mut q = Vec::with_capacity(n_q * hd);
    for seg in siblings {
        for r in seg.q_start as usize..(seg.q_start + seg.q_len) as usize {
            q.extend_from_slice(&qkv.data[r * cols + q_at..][..hd]);
        }
    }
    // Scores [n_q, stride]: the ancestor columns for every row at once, then each sibling's own block. Every
    // pointer below addresses rows that exist (`attention` checked the ranges) and columns q/k/v_at + hd <= cols.
    let mut p = vec![0f32; n_q * stride];
    let mut col = 0;
    for b in ancestors {
        unsafe {
            small_gemm(
                n_q,
                b.count,
                hd,
                p.as_mut_ptr().add(col),
                stride,
                false,
                q.as_ptr(),
                hd,
                b.rows.as_ptr().add(b.first * cols + k_at),
                1,
                cols,
                scale,
            )
        };
        col += b.count;
    }
    let mut r0 = 0;
    for seg in siblings {
        let (first, len) = (seg.q_start as usize, seg.q_len as usize);
        unsafe {
            small_gemm(
                len,
                len,
                hd,
                p.as_mut_ptr().add(r0 * stride + n_anc),
                stride,
                false,
                q.as_ptr().add(r0 * hd),
                hd,
                qkv.data.as_ptr().add(first * cols + k_at),
                1,
                cols,
                scale,
            )
        };
        for i in 0..len {
            let (seen, masked) = p[(r0 + i) * stride..(r0 + i + 1) * stride].split_at_mut(n_anc + i + 1);
            softmax_in_place(seen);
            masked.fill(0.0);
        }
        r0 += len;
    }
    // O = P[:, ancestors] V_ancestors + (per sibling) P[own rows, own columns] V_own.
    let mut o = vec![0f32; n_q * hd];
    let mut col = 0;
    for (n, b) in ancestors.iter().enumerate() {
        unsafe {
            small_gemm(
                n_q,
                hd,
                b.count,
                o.as_mut_ptr(),
                hd,
                n > 0,
                p.as_ptr().add(col),
                stride,
                b.rows.as_ptr().add(b.first * cols + v_at),
                cols,
                1,
                1.0,
            )
        };
        col += b.count;
    }
    let mut r0 = 0;
    for seg in siblings {
        let (first, len) = (seg.q_start as usize, seg.q_len as usize);
        unsafe {
            small_gemm(
                len,
                hd,
                len,
                o.as_mut_ptr().add(r0 * hd),
                hd,
                n_anc > 0,
                p.as_ptr().add(r0 * stride + n_anc),
                stride,
                qkv.data.as_ptr().add(first * cols + v_at),
                cols,
                1,
                1.0,
            )
        };
        r0 += len;
    }
    o
}

multiversion! {
    /// x = softmax(x) (a NaN anywhere makes the whole row NaN).
    fn softmax_in_place(x: &mut [f32]) {
        let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
        for v in x.iter_mut() {
            *v = math::exp_nonpositive(*v - max);
        }
        let inv = 1.0 / math::sum(x);
        for v in x.iter_mut() {
            *v *= inv;
        }
    }
}

multiversion! {
    /// y = (x - mean) / sqrt(var + eps) * w + b over one row, statistics in f32 as torch computes them.
    fn layernorm_row(y: &mut [f32], x: &[f32], w: &[f32], b: &[f32], eps: f32) {
        let c = x.len() as f32;
        let mean = math::sum(x) / c;
        let mut sq = [0f32; 8];
        for chunk in x.chunks(8) {
            for (acc, v) in sq.iter_mut().zip(chunk) {
                *acc += (v - mean) * (v - mean);
            }
        }
        let inv = 1.0 / (math::sum(&sq) / c + eps).sqrt();
        for (((y, x), w), b) in y.iter_mut().zip(x).zip(w).zip(b) {
            *y = (x - mean) * inv * w + b;
        }
    }
}

impl Backend for Cpu {
    type Tensor = CpuTensor;
    type Layout = BatchLayout;
    type Index = Vec<u32>;
    type Scores = Vec<TokenScore>;

    fn describe(&self) -> String {
        format!(
            "cpu f32 ({} thread{})",
            rayon::current_num_threads(),
            if rayon::current_num_threads() == 1 { "" } else { "s" }
        )
    }

    fn upload(&self, t: &HostTensor) -> Result<CpuTensor> {
        let values = t.to_f32()?;
        let (rows, cols) = match t.shape.as_slice() {
            [n] => (1, *n),
            [r, c] => (*r, *c),
            other => return Err(Error::tensor(&t.name, format!("has shape {other:?}, expected 1-D or 2-D"))),
        };
        Ok(CpuTensor::new(rows, cols, values))
    }

    fn from_host(&self, rows: usize, cols: usize, values: &[f32]) -> Result<CpuTensor> {
        if rows * cols != values.len() {
            return Err(Error::invalid(format!("from_host: {} values for [{rows}, {cols}]", values.len())));
        }
        Ok(CpuTensor::new(rows, cols, values.to_vec()))
    }

    fn to_host(&self, t: &CpuTensor) -> Result<Vec<f32>> {
        Ok(t.data.clone())
    }

    fn prepare(&self, layout: &BatchLayout, tables: &[&[u32]]) -> Result<(BatchLayout, Vec<Vec<u32>>)> {
        Ok((layout.clone(), tables.iter().map(|t| t.to_vec()).collect()))
    }

    fn index(&self, values: &[u32]) -> Result<Vec<u32>> {
        Ok(values.to_vec())
    }

    fn embedding(&self, table: &CpuTensor, ids: &Vec<u32>) -> Result<CpuTensor> {
        let _timed = scope(Op::Embedding);
        let h = table.cols;
        let mut out = vec![0f32; ids.len() * h];
        for (dst, &id) in out.chunks_mut(h).zip(ids) {
            if id as usize >= table.rows {
                return Err(Error::invalid(format!(
                    "token id {id} is outside the embedding table of {} rows",
                    table.rows
                )));
            }
            dst.copy_from_slice(table.row(id as usize));
        }
        Ok(CpuTensor::new(ids.len(), h, out))
    }

    fn layernorm(&self, x: &CpuTensor, w: &CpuTensor, b: &CpuTensor, eps: f32) -> Result<CpuTensor> {
        let _timed = scope(Op::LayerNorm);
        let c = x.cols;
        let mut out = vec![0f32; x.data.len()];
        out.par_chunks_mut(c)
            .zip(x.data.par_chunks(c))
            .for_each(|(y, x)| layernorm_row(y, x, &w.data, &b.data, eps));
        Ok(CpuTensor::new(x.rows, c, out))
    }

    fn parallel_norms(
        &self,
        x: &mut CpuTensor,
        ln1: (&CpuTensor, &CpuTensor),
        ln2: (&CpuTensor, &CpuTensor),
        eps: f32,
        out_biases: (&CpuTensor, &CpuTensor),
    ) -> Result<(CpuTensor, CpuTensor)> {
        let c = x.cols;
        for (what, t) in [("ln1 weight", ln1.0), ("ln1 bias", ln1.1), ("ln2 weight", ln2.0), ("ln2 bias", ln2.1)]
            .into_iter()
            .chain([("attention output bias", out_biases.0), ("MLP output bias", out_biases.1)])
        {
            if t.data.len() != c {
                return Err(Error::invalid(format!(
                    "parallel_norms: {c} columns, the {what} has {} values",
                    t.data.len()
                )));
            }
        }
        let a = self.layernorm(x, ln1.0, ln1.1, eps)?;
        let m = self.layernorm(x, ln2.0, ln2.1, eps)?;
        let _timed = scope(Op::ResidualAdd);
        let (ba, bm) = (&out_biases.0.data, &out_biases.1.data);
        x.data.par_chunks_mut(c).for_each(|row| {
            for ((v, p), q) in row.iter_mut().zip(ba).zip(bm) {
                *v = *v + p + q;
            }
        });
        Ok((a, m))
    }

    fn linear_accumulate(&self, y: &mut CpuTensor, x: &CpuTensor, w: &CpuTensor) -> Result<()> {
        let out = self.linear(x, w, None)?;
        if (out.rows, out.cols) != (y.rows, y.cols) {
            return Err(Error::invalid(format!(
                "linear_accumulate: [{}, {}] onto [{}, {}]",
                out.rows, out.cols, y.rows, y.cols
            )));
        }
        let _timed = scope(Op::ResidualAdd);
        y.data.par_iter_mut().zip(&out.data).for_each(|(y, v)| *y += v);
        Ok(())
    }

    fn linear(&self, x: &CpuTensor, w: &CpuTensor, b: Option<&CpuTensor>) -> Result<CpuTensor> {
        let _timed = scope(Op::Linear);
        x_wt_plus_b(x, w, b)
    }

    fn bias_gelu(&self, x: &mut CpuTensor, b: &CpuTensor) -> Result<()> {
        let _timed = scope(Op::BiasGelu);
        let c = x.cols;
        x.data.par_chunks_mut(c).for_each(|row| math::bias_gelu_row(row, &b.data));
        Ok(())
    }

    fn qkv_rotary(&self, x: &CpuTensor, w: &CpuTensor, b: &CpuTensor, layout: &BatchLayout, s: AttnShape) -> Result<CpuTensor> {
        let (hd, r) = (s.head_dim, s.rotary_ndims);
        if w.rows != 3 * s.heads * hd || x.cols != w.cols || b.data.len() != w.rows || x.rows != layout.tokens() || r > hd || r % 2 != 0 {
            return Err(Error::invalid(format!(
                "qkv_rotary: [{}, {}] x [{}, {}]^T + a bias of {} for {} batch rows, {} heads of {hd} dims, {r} rotary dims (expected 3 x heads x hd outputs, an even rotary count <= hd)",
                x.rows,
                x.cols,
                w.rows,
                w.cols,
                b.data.len(),
                layout.tokens(),
                s.heads
            )));
        }
        let mut qkv = self.linear(x, w, Some(b))?;
        let _timed = scope(Op::QkvRotary);
        let half = r / 2;
        let inv_freq = rotary_inv_freq(r, s.rotary_base);
        let cols = qkv.cols;
        qkv.data.par_chunks_mut(cols).zip(&layout.positions).for_each(|(row, &pos)| {
            let (cos, sin): (Vec<f32>, Vec<f32>) = inv_freq.iter().map(|f| (pos as f32 * f).sin_cos()).map(|(s, c)| (c, s)).unzip();
            for head in 0..s.heads {
                for part in 0..2 {
                    // q at offset 0, k at offset hd inside the head's [q | k | v] block
                    let x = &mut row[head * 3 * hd + part * hd..][..r];
                    for i in 0..half {
                        let (x1, x2) = (x[i], x[i + half]);
                        x[i] = x1 * cos[i] - x2 * sin[i];
                        x[i + half] = x2 * cos[i] + x1 * sin[i];
                    }
                }
            }
        });
        Ok(qkv)
    }

    fn attention(&self, qkv: &CpuTensor, past: Option<&CpuTensor>, layout: &BatchLayout, s: AttnShape) -> Result<CpuTensor> {
        let _timed = scope(Op::Attention);
        let (heads, hd) = (s.heads, s.head_dim);
        let h = heads * hd;
        let p = layout.past_len;
        if past.map_or(0, |t| t.rows) != p {
            return Err(Error::invalid(format!(
                "attention: layout expects {p} cached rows, cache holds {}",
                past.map_or(0, |t| t.rows)
            )));
        }
        let mut covered = vec![false; qkv.rows];
        for seg in &layout.segments {
            for i in seg.q_start as usize..(seg.q_start + seg.q_len) as usize {
                match covered.get_mut(i) {
                    Some(slot @ false) => *slot = true,
                    _ => return Err(Error::invalid(format!("attention: row {i} is outside the batch or in two segments"))),
                }
            }
            let keys = p + qkv.rows;
            if let Some(&(start, len)) = seg.ancestors.iter().find(|&&(start, len)| start as usize + len as usize > keys) {
                return Err(Error::invalid(format!(
                    "attention: ancestor keys {start}..{} past the {keys} keys there are",
                    start + len
                )));
            }
        }
        if covered.contains(&false) {
            return Err(Error::invalid("attention: segments do not cover every row of the batch"));
        }
        // Keys in key index space are rows of the cache ([0, P)) or of this batch ([P, P + T)); a range is split
        // at P so that each block is contiguous rows of one matrix.
        let blocks_of = |ranges: &[(u32, u32)]| -> Vec<KeyBlock> {
            let mut blocks = vec![];
            for &(start, len) in ranges {
                let (start, len) = (start as usize, len as usize);
                let cached = len.min(p.saturating_sub(start));
                if cached > 0 {
                    blocks.push(KeyBlock {
                        rows: &past.unwrap().data,
                        first: start,
                        count: cached,
                    });
                }
                if len > cached {
                    blocks.push(KeyBlock {
                        rows: &qkv.data,
                        first: start + cached - p,
                        count: len - cached,
                    });
                }
            }
            blocks
        };
        // Siblings (segments with the same ancestors: the answers of one question) attend to those ancestors in
        // one matrix product for all their rows; each then adds its own rows, causally.
        let mut groups: Vec<(&[(u32, u32)], Vec<&crate::backend::AttnSegment>)> = vec![];
        let mut group_of: std::collections::HashMap<&[(u32, u32)], usize> = Default::default();
        for seg in &layout.segments {
            let g = *group_of.entry(&seg.ancestors).or_insert_with(|| {
                groups.push((&seg.ancestors, vec![]));
                groups.len() - 1
            });
            groups[g].1.push(seg);
        }
        let tasks: Vec<(usize, usize)> = (0..groups.len()).flat_map(|g| (0..heads).map(move |hh| (g, hh))).collect();
        let results: Vec<Vec<f32>> = tasks
            .par_iter()
            .map(|&(g, head)| attend_siblings(qkv, &groups[g].1, &blocks_of(groups[g].0), head, hd))
            .collect();
        let mut out = vec![0f32; qkv.rows * h];
        for (&(g, head), o) in tasks.iter().zip(&results) {
            let rows = groups[g]
                .1
                .iter()
                .flat_map(|seg| seg.q_start as usize..(seg.q_start + seg.q_len) as usize);
            for (row, o_row) in rows.zip(o.chunks_exact(hd)) {
                out[row * h + head * hd..][..hd].copy_from_slice(o_row);
            }
        }
        Ok(CpuTensor::new(qkv.rows, h, out))
    }

    fn residual_add(&self, x: &mut CpuTensor, a: &CpuTensor, b: Option<&CpuTensor>) -> Result<()> {
        let _timed = scope(Op::ResidualAdd);
        check_same_shape("residual_add", x, a)?;
        match b {
            Some(b) => {
                check_same_shape("residual_add", x, b)?;
                x.data.par_iter_mut().zip(&a.data).zip(&b.data).for_each(|((x, a), b)| *x += a + b);
            }
            None => x.data.par_iter_mut().zip(&a.data).for_each(|(x, a)| *x += a),
        }
        Ok(())
    }

    fn gather_rows(&self, x: &CpuTensor, rows: &Vec<u32>) -> Result<CpuTensor> {
        let _timed = scope(Op::Rows);
        let mut out = Vec::with_capacity(rows.len() * x.cols);
        for &r in rows {
            if r as usize >= x.rows {
                return Err(Error::invalid(format!("gather_rows: row {r} of a {}-row tensor", x.rows)));
            }
            out.extend_from_slice(x.row(r as usize));
        }
        Ok(CpuTensor::new(rows.len(), x.cols, out))
    }

    fn concat_rows(&self, a: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor> {
        let _timed = scope(Op::Rows);
        if a.cols != b.cols {
            return Err(Error::invalid(format!("concat_rows: {} and {} columns", a.cols, b.cols)));
        }
        let mut data = a.data.clone();
        data.extend_from_slice(&b.data);
        Ok(CpuTensor::new(a.rows + b.rows, a.cols, data))
    }

    fn lm_head(&self, x: &CpuTensor, w: &CpuTensor) -> Result<CpuTensor> {
        let _timed = scope(Op::LmHead);
        x_wt_plus_b(x, w, None)
    }

    fn new_scores(&self, n: usize) -> Result<Vec<TokenScore>> {
        Ok(vec![
            TokenScore {
                logprob: f32::NAN,
                is_greedy: false
            };
            n
        ])
    }

    fn logsoftmax_gather(&self, logits: &CpuTensor, targets: &Vec<u32>, scores: &mut Vec<TokenScore>, at: usize) -> Result<()> {
        let _timed = scope(Op::LogSoftmax);
        let pairs = check_targets(targets, scores.len(), at)?;
        // Per row: logsumexp (f64 accumulation) and the maximum, in one pass.
        let stats: Vec<(f64, f32)> = logits.data.par_chunks(logits.cols).map(math::logsumexp_and_max).collect();
        for (out, pair) in scores[at..at + pairs].iter_mut().zip(targets.chunks_exact(2)) {
            let (row, tok) = (pair[0] as usize, pair[1] as usize);
            if row >= logits.rows || tok >= logits.cols {
                return Err(Error::invalid(format!(
                    "logsoftmax_gather: target ({row}, {tok}) outside logits [{}, {}]",
                    logits.rows, logits.cols
                )));
            }
            let (lse, max) = stats[row];
            let values = &logits.data[row * logits.cols..(row + 1) * logits.cols];
            *out = TokenScore {
                logprob: (values[tok] as f64 - lse) as f32,
                // torch.argmax: the target is greedy if it is the *first* maximum (checked only when it is one).
                is_greedy: values[tok] == max && !values[..tok].contains(&max),
            };
        }
        Ok(())
    }

    fn read_scores(&self, scores: &Vec<TokenScore>) -> Result<Vec<TokenScore>> {
        Ok(scores.clone())
    }

    /// No device, so no copies, synchronisations or launches; per-op wall time while `time_ops` is on.
    fn activity(&self) -> Activity {
        Activity {
            ops: profile::seconds()
                .into_iter()
                .filter(|&(_, secs)| secs > 0.0)
                .map(|(op, secs)| (op.name().to_string(), (0, secs)))
                .collect(),
            clock: "host wall time per op (CPU backend)",
            ..Activity::default()
        }
    }

    fn time_ops(&self, on: bool) {
        profile::enable(on);
    }
}
