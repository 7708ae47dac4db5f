//! The CPU backend: the oracle every CUDA kernel is checked against, and a usable engine for small models.
//!
//! f32 throughout, plain loops a reader can hold against HF `modeling_gpt_neox.py`, parallel across rows
//! with rayon. Matrix products use the `gemm` crate (blocked, SIMD, multi-threaded).

use super::{AttnShape, Backend, BatchLayout, Tensor2, TokenScore};
use crate::checkpoint::HostTensor;
use crate::error::{Error, Result};
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

/// Σ exp(v - max) over a row (v <= max). The exps are computed 64 at a time into a buffer with a branch-free
/// polynomial the compiler vectorises (libm's exp is a scalar call and dominated small models' scoring);
/// each block is summed in f32 and the blocks in f64, so the relative error stays ~1e-7 at 50k columns.
fn sum_exp_shifted(row: &[f32], max: f32) -> f64 {
    let mut buf = [0f32; 64];
    let mut total = 0f64;
    for chunk in row.chunks(64) {
        for (b, &v) in buf.iter_mut().zip(chunk) {
            *b = exp_nonpositive(v - max);
        }
        total += buf[..chunk.len()].iter().sum::<f32>() as f64;
    }
    total
}

/// exp(x) for x <= 0, within 2 ulp of libm: Cephes expf (Cody-Waite reduction by ln 2, degree-6 polynomial),
/// written without branches or calls so that a loop over it vectorises on baseline x86-64 (SSE2).
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer
    // exp(-87) ~ 1.6e-38, near the smallest normal f32; the row's max term is 1, so smaller terms vanish anyway.
    // Written as a comparison, not `f32::max`, so that a NaN stays NaN (`max` would turn it into -87, and a
    // NaN logit would silently drop out of the softmax). Still one `maxps`.
    let x = if x < -87.0 { -87.0 } else { x };
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4; // x - n ln2, ln2 split into an exact head and a tail
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Exact GELU, 0.5 x (1 + erf(x / sqrt 2)), as torch.nn.functional.gelu.
pub fn gelu_erf(x: f32) -> f32 {
    (0.5 * x as f64 * (1.0 + libm::erf(x as f64 / std::f64::consts::SQRT_2))) as f32
}

impl Backend for Cpu {
    type Tensor = CpuTensor;
    type Layout = BatchLayout;

    fn describe(&self) -> String {
        format!("cpu f32 ({} thread{})", rayon::current_num_threads(), if rayon::current_num_threads() == 1 { "" } else { "s" })
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

    fn prepare(&self, layout: &BatchLayout) -> Result<BatchLayout> {
        Ok(layout.clone())
    }

    fn embedding(&self, table: &CpuTensor, ids: &[u32]) -> Result<CpuTensor> {
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
        let c = x.cols;
        let mut out = vec![0f32; x.data.len()];
        out.par_chunks_mut(c).zip(x.data.par_chunks(c)).for_each(|(y, x)| {
            let mean = x.iter().sum::<f32>() / c as f32;
            let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / c as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for i in 0..c {
                y[i] = (x[i] - mean) * inv * w.data[i] + b.data[i];
            }
        });
        Ok(CpuTensor::new(x.rows, c, out))
    }

    fn linear(&self, x: &CpuTensor, w: &CpuTensor, b: Option<&CpuTensor>) -> Result<CpuTensor> {
        let (m, k, n) = (x.rows, x.cols, w.rows);
        if w.cols != k {
            return Err(Error::invalid(format!(
                "linear: input has {k} features, weight [{}, {}] expects {}",
                w.rows, w.cols, w.cols
            )));
        }
        // Start from the broadcast bias so the GEMM accumulates onto it (dst = 1*dst + x w^T).
        let mut out = match b {
            Some(b) => b.data.iter().copied().cycle().take(m * n).collect(),
            None => vec![0f32; m * n],
        };
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

    fn bias_gelu(&self, x: &mut CpuTensor, b: &CpuTensor) -> Result<()> {
        let c = x.cols;
        x.data.par_chunks_mut(c).for_each(|row| {
            for (v, bias) in row.iter_mut().zip(&b.data) {
                *v = gelu_erf(*v + bias);
            }
        });
        Ok(())
    }

    fn rotary(&self, qkv: &mut CpuTensor, layout: &BatchLayout, s: AttnShape) -> Result<()> {
        let (hd, r) = (s.head_dim, s.rotary_ndims);
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
        Ok(())
    }

    fn attention(&self, qkv: &CpuTensor, past: Option<&CpuTensor>, layout: &BatchLayout, s: AttnShape) -> Result<CpuTensor> {
        let (heads, hd) = (s.heads, s.head_dim);
        let h = heads * hd;
        let p = layout.past_len;
        if past.map_or(0, |t| t.rows) != p {
            return Err(Error::invalid(format!(
                "attention: layout expects {p} cached rows, cache holds {}",
                past.map_or(0, |t| t.rows)
            )));
        }
        let key_row = |i: usize| -> &[f32] {
            if i < p {
                past.unwrap().row(i)
            } else {
                qkv.row(i - p)
            }
        };
        let scale = 1.0 / (hd as f32).sqrt();
        // One task per (batch row, head): rows are independent.
        let mut out = vec![0f32; qkv.rows * h];
        let mut seg_of_row: Vec<Option<&crate::backend::AttnSegment>> = vec![None; qkv.rows];
        for seg in &layout.segments {
            for i in seg.q_start as usize..(seg.q_start + seg.q_len) as usize {
                match seg_of_row.get_mut(i) {
                    Some(slot @ None) => *slot = Some(seg),
                    _ => return Err(Error::invalid(format!("attention: row {i} is outside the batch or in two segments"))),
                }
            }
        }
        if seg_of_row.iter().any(|s| s.is_none()) {
            return Err(Error::invalid("attention: segments do not cover every row of the batch"));
        }
        out.par_chunks_mut(h).enumerate().for_each(|(row, o)| {
            let seg = seg_of_row[row].unwrap();
            let own_start = p + seg.q_start as usize;
            let keys: Vec<usize> = seg
                .ancestors
                .iter()
                .flat_map(|&(start, len)| start as usize..(start + len) as usize)
                .chain(own_start..=p + row)
                .collect();
            let q_row = qkv.row(row);
            let mut scores = vec![0f32; keys.len()];
            for head in 0..heads {
                let q = &q_row[head * 3 * hd..][..hd];
                for (sc, &k) in scores.iter_mut().zip(&keys) {
                    let kv = &key_row(k)[head * 3 * hd + hd..][..hd];
                    *sc = q.iter().zip(kv).map(|(a, b)| a * b).sum::<f32>() * scale;
                }
                let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let mut denom = 0f32;
                for sc in scores.iter_mut() {
                    *sc = (*sc - max).exp();
                    denom += *sc;
                }
                let o = &mut o[head * hd..][..hd];
                for (sc, &k) in scores.iter().zip(&keys) {
                    let v = &key_row(k)[head * 3 * hd + 2 * hd..][..hd];
                    let wgt = sc / denom;
                    for d in 0..hd {
                        o[d] += wgt * v[d];
                    }
                }
            }
        });
        Ok(CpuTensor::new(qkv.rows, h, out))
    }

    fn residual_add(&self, x: &mut CpuTensor, a: &CpuTensor, b: Option<&CpuTensor>) -> Result<()> {
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

    fn gather_rows(&self, x: &CpuTensor, rows: &[u32]) -> Result<CpuTensor> {
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
        if a.cols != b.cols {
            return Err(Error::invalid(format!("concat_rows: {} and {} columns", a.cols, b.cols)));
        }
        let mut data = a.data.clone();
        data.extend_from_slice(&b.data);
        Ok(CpuTensor::new(a.rows + b.rows, a.cols, data))
    }

    fn lm_head(&self, x: &CpuTensor, w: &CpuTensor) -> Result<CpuTensor> {
        self.linear(x, w, None)
    }

    fn logsoftmax_gather(&self, logits: &CpuTensor, targets: &[(u32, u32)]) -> Result<Vec<TokenScore>> {
        // Per row: logsumexp (f64 accumulation) and the first maximum.
        let stats: Vec<(f64, usize)> = logits
            .data
            .par_chunks(logits.cols)
            .map(|row| {
                let (mut arg, mut max) = (0usize, f32::NEG_INFINITY);
                for (i, &v) in row.iter().enumerate() {
                    if v > max {
                        (arg, max) = (i, v);
                    }
                }
                (max as f64 + sum_exp_shifted(row, max).ln(), arg)
            })
            .collect();
        targets
            .iter()
            .map(|&(row, tok)| {
                let (row, tok) = (row as usize, tok as usize);
                if row >= logits.rows || tok >= logits.cols {
                    return Err(Error::invalid(format!(
                        "logsoftmax_gather: target ({row}, {tok}) outside logits [{}, {}]",
                        logits.rows, logits.cols
                    )));
                }
                let (lse, arg) = stats[row];
                Ok(TokenScore {
                    logprob: (logits.data[row * logits.cols + tok] as f64 - lse) as f32,
                    is_greedy: arg == tok,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_matches_libm() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -(i as f32) * 0.0005; // 0 .. -100
            let want = (x as f64).exp();
            let got = exp_nonpositive(x) as f64;
            if x > -87.0 {
                worst = worst.max(((got - want) / want).abs());
            } else {
                assert!(got <= 1.7e-38, "exp({x}) = {got}: clamped terms must stay negligible");
            }
        }
        assert!(worst < 3e-7, "worst relative error {worst:e}");
    }

    #[test]
    fn nan_propagates_through_exp_and_the_row_sum() {
        assert!(exp_nonpositive(f32::NAN).is_nan());
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), exp_nonpositive(-87.0));
        let mut row = vec![0.5f32; 100];
        row[37] = f32::NAN;
        assert!(sum_exp_shifted(&row, 0.5).is_nan());
    }

    #[test]
    fn logsumexp_of_a_wide_row_is_exact_to_1e6() {
        let mut r = crate::testing::Rng(5);
        let row: Vec<f32> = r.values(50304, 30.0);
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let exact: f64 = row.iter().map(|&v| (v as f64 - max as f64).exp()).sum();
        let fast = sum_exp_shifted(&row, max);
        assert!(((fast - exact) / exact).abs() < 1e-6, "{fast} vs {exact}");
    }
}
