//! The statistics of the paper's analysis, written out so they can be checked by hand:
//! ordinary least squares with t tests on the coefficients, the Benjamini-Hochberg adjustment,
//! and the tests behind the trend flags of the report: McNemar's exact test and a paired t test on
//! per-item data, and an unpaired two-sample approximation for when only aggregates are known.
//!
//! The paper fits, per task, R's `lm(scale(Accuracy) ~ scale(log10(Params)) * scale(log10(Tokens)))`
//! over its 64 runs and adjusts the 3 x 12 p-values with `p.adjust(method = "BH")`.
//! [`interaction_model`] and [`p_adjust_bh`] reproduce exactly that.

use crate::error::{Error, Result};
use statrs::distribution::{ContinuousCDF, Normal, StudentsT};
use statrs::function::beta::beta_reg;

/// R's `scale()`: subtract the mean, divide by the sample standard deviation (n - 1 denominator).
/// `None` when there are fewer than two values or they are all equal (R would give NaN).
pub fn zscore(x: &[f64]) -> Option<Vec<f64>> {
    let n = x.len();
    if n < 2 {
        return None;
    }
    let mean = x.iter().sum::<f64>() / n as f64;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1) as f64;
    let sd = var.sqrt();
    // All-equal input (up to rounding) has no spread to scale by.
    if !(sd > 1e-12 * mean.abs().max(1.0)) {
        return None;
    }
    Some(x.iter().map(|v| (v - mean) / sd).collect())
}

/// One fitted coefficient with its t test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Coef {
    pub estimate: f64,
    pub std_error: f64,
    /// estimate / std_error
    pub t: f64,
    /// Two-sided p-value of t under Student's t with the fit's residual degrees of freedom.
    pub p: f64,
}

/// An ordinary least-squares fit, as R's `summary(lm(...))` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct OlsFit {
    /// One per design column, in column order.
    pub coefs: Vec<Coef>,
    /// Residual degrees of freedom: rows - columns.
    pub df: usize,
    /// Residual sum of squares.
    pub rss: f64,
}

/// Least squares of `y` on the given design columns (include a column of ones for an intercept).
///
/// Solved through the normal equations `(X'X) b = X'y`, inverting the k x k matrix `X'X` by
/// Gauss-Jordan elimination with partial pivoting. Why this and not a QR decomposition: the designs
/// here have at most 4 columns, are z-scored or centred (so `X'X` is well conditioned and squaring
/// the condition number costs nothing measurable in f64), and the standard errors need the diagonal
/// of `(X'X)^-1` anyway, which Gauss-Jordan gives directly. Twenty readable lines beat a dependency.
pub fn ols(columns: &[&[f64]], y: &[f64]) -> Result<OlsFit> {
    let k = columns.len();
    let n = y.len();
    if k == 0 {
        return Err(Error::invalid("least squares: the design has no columns"));
    }
    if let Some(c) = columns.iter().find(|c| c.len() != n) {
        return Err(Error::invalid(format!(
            "least squares: a design column has {} values, expected {n} (one per observation)",
            c.len()
        )));
    }
    if n <= k {
        return Err(Error::invalid(format!(
            "least squares: {n} observations for {k} coefficients leave no residual degrees of freedom (need at least {})",
            k + 1
        )));
    }
    if y.iter().chain(columns.iter().flat_map(|c| c.iter())).any(|v| !v.is_finite()) {
        return Err(Error::invalid("least squares: the data contain a non-finite value"));
    }
    // X'X and X'y.
    let mut xtx = vec![vec![0.0; k]; k];
    let mut xty = vec![0.0; k];
    for i in 0..k {
        for j in 0..k {
            xtx[i][j] = (0..n).map(|r| columns[i][r] * columns[j][r]).sum();
        }
        xty[i] = (0..n).map(|r| columns[i][r] * y[r]).sum();
    }
    let inv = invert(&xtx)
        .ok_or_else(|| Error::invalid("least squares: the design columns are linearly dependent (a predictor is constant or duplicates another)"))?;
    let beta: Vec<f64> = (0..k).map(|i| (0..k).map(|j| inv[i][j] * xty[j]).sum()).collect();
    let rss: f64 = (0..n)
        .map(|r| {
            let fitted: f64 = (0..k).map(|i| beta[i] * columns[i][r]).sum();
            (y[r] - fitted) * (y[r] - fitted)
        })
        .sum();
    let df = n - k;
    let sigma2 = rss / df as f64;
    let coefs = (0..k)
        .map(|i| {
            let std_error = (sigma2 * inv[i][i]).sqrt();
            let t = beta[i] / std_error;
            Coef {
                estimate: beta[i],
                std_error,
                t,
                p: t_two_sided_p(t, df as f64),
            }
        })
        .collect();
    Ok(OlsFit { coefs, df, rss })
}

/// Inverse of a small square matrix by Gauss-Jordan elimination with partial pivoting;
/// `None` if it is singular (a pivot vanishes relative to the matrix's scale).
fn invert(a: &[Vec<f64>]) -> Option<Vec<Vec<f64>>> {
    let k = a.len();
    let scale = a.iter().flat_map(|r| r.iter()).fold(0.0f64, |m, v| m.max(v.abs()));
    if scale == 0.0 {
        return None;
    }
    // Augment [A | I] and reduce the left half to I.
    let mut m: Vec<Vec<f64>> = a
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let mut r = row.clone();
            r.extend((0..k).map(|j| if i == j { 1.0 } else { 0.0 }));
            r
        })
        .collect();
    for col in 0..k {
        let pivot_row = (col..k).max_by(|&x, &y| m[x][col].abs().total_cmp(&m[y][col].abs()))?;
        if m[pivot_row][col].abs() <= 1e-12 * scale {
            return None;
        }
        m.swap(col, pivot_row);
        let p = m[col][col];
        for v in m[col].iter_mut() {
            *v /= p;
        }
        for r in 0..k {
            if r != col {
                let f = m[r][col];
                if f != 0.0 {
                    for c in 0..2 * k {
                        m[r][c] -= f * m[col][c];
                    }
                }
            }
        }
    }
    Some(m.into_iter().map(|r| r[k..].to_vec()).collect())
}

/// Two-sided p-value of a t statistic: P(|T| >= |t|) for Student's t with `df` degrees of freedom.
/// Uses the survival function so tiny p-values keep their precision.
pub fn t_two_sided_p(t: f64, df: f64) -> f64 {
    if t.is_nan() || !(df > 0.0) {
        return f64::NAN;
    }
    let dist = StudentsT::new(0.0, 1.0, df).expect("location 0, scale 1 and df > 0 are valid");
    (2.0 * dist.sf(t.abs())).min(1.0)
}

/// Upper tail of the standard normal: P(Z >= z).
pub fn normal_sf(z: f64) -> f64 {
    Normal::new(0.0, 1.0).expect("standard normal is valid").sf(z)
}

/// Benjamini-Hochberg adjusted p-values, exactly as R's `p.adjust(p, method = "BH")`:
/// with the p-values sorted decreasingly, q_(i) = min over j >= i of min(1, n / j * p_(j)).
/// NaN entries (R's NA) stay NaN and do not count towards n, as in R.
pub fn p_adjust_bh(p: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..p.len()).filter(|&i| !p[i].is_nan()).collect();
    let n = idx.len();
    let mut out = vec![f64::NAN; p.len()];
    // Decreasing p; rank (1-based, in increasing order) of the i-th of them is n - i.
    idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
    let mut running_min = f64::INFINITY;
    for (i, &j) in idx.iter().enumerate() {
        let rank = (n - i) as f64;
        running_min = running_min.min(n as f64 / rank * p[j]);
        out[j] = running_min.min(1.0);
    }
    out
}

/// The paper's per-task model, its three effects tested.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InteractionFit {
    /// scale(log10 params)
    pub params: Coef,
    /// scale(log10 tokens)
    pub tokens: Coef,
    /// scale(log10 params) x scale(log10 tokens)
    pub interaction: Coef,
    /// Residual degrees of freedom (runs - 4).
    pub df: usize,
}

/// `lm(scale(acc) ~ scale(log10(params)) * scale(log10(tokens)))`: design columns intercept, P, T and
/// P:T, where P and T are the z-scored log10 columns and P:T is their product (R's `*` expands to the
/// main effects plus the product of the already-scaled columns).
pub fn interaction_model(params: &[f64], tokens: &[f64], acc: &[f64]) -> Result<InteractionFit> {
    let n = acc.len();
    if params.len() != n || tokens.len() != n {
        return Err(Error::invalid("interaction model: params, tokens and accuracy differ in length"));
    }
    if let Some(v) = params.iter().chain(tokens).find(|v| !(**v > 0.0) || !v.is_finite()) {
        return Err(Error::invalid(format!(
            "interaction model: log10 needs positive finite params and tokens, got {v}"
        )));
    }
    let lp: Vec<f64> = params.iter().map(|v| v.log10()).collect();
    let lt: Vec<f64> = tokens.iter().map(|v| v.log10()).collect();
    let p = zscore(&lp).ok_or_else(|| Error::invalid("interaction model: every run has the same model size, so there is no size effect to fit"))?;
    let t =
        zscore(&lt).ok_or_else(|| Error::invalid("interaction model: every run has the same checkpoint, so there is no training effect to fit"))?;
    let y = zscore(acc).ok_or_else(|| Error::invalid("interaction model: accuracy is the same in every run, so it cannot be scaled"))?;
    let ones = vec![1.0; n];
    let pt: Vec<f64> = p.iter().zip(&t).map(|(a, b)| a * b).collect();
    let fit = ols(&[&ones, &p, &t, &pt], &y)?;
    Ok(InteractionFit {
        params: fit.coefs[1],
        tokens: fit.coefs[2],
        interaction: fit.coefs[3],
        df: fit.df,
    })
}

/// A quadratic `y ~ 1 + x + x^2` fitted by least squares (x centred on its mean for conditioning).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuadraticFit {
    /// The x^2 coefficient and its t test (df = n - 3). Positive: U-shaped; negative: inverted U.
    pub curvature: Coef,
    /// Where the fitted parabola turns, in the units of x (NaN if the curvature is exactly 0).
    pub vertex: f64,
    pub df: usize,
}

pub fn quadratic_fit(x: &[f64], y: &[f64]) -> Result<QuadraticFit> {
    let n = x.len();
    if y.len() != n {
        return Err(Error::invalid("quadratic fit: x and y differ in length"));
    }
    if n < 4 {
        return Err(Error::invalid(format!("quadratic fit: needs at least 4 points, got {n}")));
    }
    let mean = x.iter().sum::<f64>() / n as f64;
    let xc: Vec<f64> = x.iter().map(|v| v - mean).collect();
    let x2: Vec<f64> = xc.iter().map(|v| v * v).collect();
    let ones = vec![1.0; n];
    let fit = ols(&[&ones, &xc, &x2], y)?;
    let (b1, b2) = (fit.coefs[1].estimate, fit.coefs[2].estimate);
    let vertex = if b2 == 0.0 { f64::NAN } else { mean - b1 / (2.0 * b2) };
    Ok(QuadraticFit {
        curvature: fit.coefs[2],
        vertex,
        df: fit.df,
    })
}

/// A one-sided test that a quantity fell from an earlier checkpoint to a later one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropTest {
    /// The effect: earlier minus later (mean over items); positive is a decline.
    pub effect: f64,
    /// Its standard error (NaN where the test has none, as McNemar's exact test).
    pub se: f64,
    /// The test statistic: t, z, or for McNemar the count of items right before and wrong after.
    pub stat: f64,
    /// One-sided p of a decline.
    pub p: f64,
}

/// McNemar's exact test, one-sided, on paired 0/1 outcomes: `b` items right at the earlier checkpoint and
/// wrong at the later, `c` the other way round. Under "no change" each of the b + c discordant items is
/// equally likely to go either way, so b ~ Binomial(b + c, 1/2) and p = P(X >= b) = I_{1/2}(b, b + c - b + 1)
/// (the regularized incomplete beta function; exact, no normal approximation, no standard error to be 0).
/// No discordant item: p = 1.
pub fn mcnemar_exact_greater(b: u64, c: u64) -> f64 {
    let m = b + c;
    if b == 0 {
        return 1.0;
    }
    beta_reg(b as f64, (m - b + 1) as f64, 0.5).clamp(0.0, 1.0)
}

/// McNemar on two paired 0/1 vectors (earlier, later), item for item. `None` if they differ in length,
/// are empty, or hold a value that is not 0 or 1.
pub fn mcnemar_drop(earlier: &[f64], later: &[f64]) -> Option<DropTest> {
    if earlier.len() != later.len() || earlier.is_empty() {
        return None;
    }
    let (mut b, mut c) = (0u64, 0u64);
    for (&x, &y) in earlier.iter().zip(later) {
        if !(x == 0.0 || x == 1.0) || !(y == 0.0 || y == 1.0) {
            return None;
        }
        b += (x > y) as u64;
        c += (x < y) as u64;
    }
    Some(DropTest {
        effect: (b as f64 - c as f64) / earlier.len() as f64,
        se: f64::NAN,
        stat: b as f64,
        p: mcnemar_exact_greater(b, c),
    })
}

/// Paired t test, one-sided, that the mean of `earlier - later` is positive (df = n - 1).
/// When every difference is the same the standard error is 0 and t is undefined; then the exact sign
/// test stands in: all n differences positive has p = 2^-n under "no change", and a zero or negative
/// common difference has p = 1. `None` if the lengths differ or there are fewer than 2 items.
pub fn paired_t_drop(earlier: &[f64], later: &[f64]) -> Option<DropTest> {
    let n = earlier.len();
    if later.len() != n || n < 2 || earlier.iter().chain(later).any(|v| !v.is_finite()) {
        return None;
    }
    let d: Vec<f64> = earlier.iter().zip(later).map(|(x, y)| x - y).collect();
    let mean = d.iter().sum::<f64>() / n as f64;
    let var = d.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1) as f64;
    let se = (var / n as f64).sqrt();
    // Equal differences up to rounding: no spread to divide by.
    if se <= 1e-12 * mean.abs() {
        let p = if mean > 0.0 { 0.5f64.powi(n.min(2000) as i32) } else { 1.0 };
        return Some(DropTest {
            effect: mean,
            se: 0.0,
            stat: f64::NAN,
            p,
        });
    }
    let t = mean / se;
    let dist = StudentsT::new(0.0, 1.0, (n - 1) as f64).expect("df >= 1 is valid");
    Some(DropTest {
        effect: mean,
        se,
        stat: t,
        p: dist.sf(t),
    })
}

/// Unpaired approximation for two proportions measured on the same `n` items, when only the two
/// proportions are known (no per-item data): the pooled two-proportion z test, z = (p1 - p2) /
/// sqrt(pbar (1 - pbar) 2 / n), pbar = (p1 + p2) / 2. The pooled standard error is the one under "no
/// change"; it is 0 only when both proportions are 0 or both are 1, where there is no difference and
/// p = 1. Treating the two as independent samples ignores that they are the same items (usually
/// positively correlated, which makes this conservative, but it is not a paired test).
pub fn two_proportion_drop(p1: f64, p2: f64, n: f64) -> DropTest {
    let pbar = (p1 + p2) / 2.0;
    let se = (pbar * (1.0 - pbar) * 2.0 / n).sqrt();
    let effect = p1 - p2;
    if !(se > 0.0) || !se.is_finite() {
        return DropTest {
            effect,
            se: 0.0,
            stat: f64::NAN,
            p: if effect > 0.0 { f64::NAN } else { 1.0 },
        };
    }
    let z = effect / se;
    DropTest {
        effect,
        se,
        stat: z,
        p: normal_sf(z),
    }
}

/// Unpaired approximation for two means with known standard errors: z = (a - b) / sqrt(se_a^2 + se_b^2).
/// Both standard errors 0: no test (p NaN), never a division by zero.
pub fn two_mean_drop(a: f64, se_a: f64, b: f64, se_b: f64) -> DropTest {
    let se = (se_a * se_a + se_b * se_b).sqrt();
    let effect = a - b;
    if !(se > 0.0) || !se.is_finite() {
        return DropTest {
            effect,
            se: 0.0,
            stat: f64::NAN,
            p: f64::NAN,
        };
    }
    let z = effect / se;
    DropTest {
        effect,
        se,
        stat: z,
        p: normal_sf(z),
    }
}

/// Holm's step-down adjustment (R's `p.adjust(p, "holm")`): sorted increasingly, q_(i) = max over j <= i of
/// min(1, (m - j + 1) p_(j)). NaN entries stay NaN and do not count towards m. Its smallest value is
/// min(1, m * min p), the Bonferroni-corrected minimum.
pub fn p_adjust_holm(p: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..p.len()).filter(|&i| !p[i].is_nan()).collect();
    let m = idx.len();
    idx.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut out = vec![f64::NAN; p.len()];
    let mut running_max = 0.0f64;
    for (j, &i) in idx.iter().enumerate() {
        running_max = running_max.max(((m - j) as f64 * p[i]).min(1.0));
        out[i] = running_max;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn bh_matches_r() {
        // p.adjust(c(0.01, 0.02, 0.03, 0.04, 0.05), "BH") = 0.05 0.05 0.05 0.05 0.05
        for q in p_adjust_bh(&[0.01, 0.02, 0.03, 0.04, 0.05]) {
            assert!(close(q, 0.05, 1e-15), "{q}");
        }
        // p.adjust(c(0.04, 0.001, 0.5, 0.03, 0.2), "BH"), by hand: ranks 3, 1, 5, 2, 4 give n/rank * p =
        // 0.0667, 0.005, 0.5, 0.075, 0.25; the running minimum from the largest p down lowers rank 2's
        // 0.075 to rank 3's 0.0667: 0.06666667 0.00500000 0.50000000 0.06666667 0.25000000.
        let q = p_adjust_bh(&[0.04, 0.001, 0.5, 0.03, 0.2]);
        let want = [0.2 / 3.0, 0.005, 0.5, 0.2 / 3.0, 0.25];
        for (a, b) in q.iter().zip(want) {
            assert!(close(*a, b, 1e-15), "{q:?}");
        }
        // Capped at 1, NA kept and not counted: p.adjust(c(0.9, NA, 0.8), "BH") = 0.9 NA 0.9
        let q = p_adjust_bh(&[0.9, f64::NAN, 0.8]);
        assert!(close(q[0], 0.9, 1e-15) && q[1].is_nan() && close(q[2], 0.9, 1e-15), "{q:?}");
        assert!(p_adjust_bh(&[]).is_empty());
    }

    #[test]
    fn zscore_uses_sample_sd() {
        // mean 2, sample sd 1
        assert_eq!(zscore(&[1.0, 2.0, 3.0]).unwrap(), vec![-1.0, 0.0, 1.0]);
        assert!(zscore(&[5.0, 5.0, 5.0]).is_none());
        assert!(zscore(&[5.0]).is_none());
    }

    #[test]
    fn ols_by_hand() {
        // y = 1, 3, 2, 4 on x = 0, 1, 2, 3: by hand, Sxx = 5, Sxy = 4, slope 0.8, intercept 2.5 - 0.8 * 1.5 = 1.3;
        // residuals -0.3, 0.9, -0.9, 0.3, RSS 1.8, sigma^2 = 0.9, se(slope) = sqrt(0.9 / 5) = 0.424264.
        let x = [0.0, 1.0, 2.0, 3.0];
        let y = [1.0, 3.0, 2.0, 4.0];
        let fit = ols(&[&[1.0; 4], &x], &y).unwrap();
        assert_eq!(fit.df, 2);
        assert!(close(fit.coefs[0].estimate, 1.3, 1e-12));
        assert!(close(fit.coefs[1].estimate, 0.8, 1e-12));
        assert!(close(fit.rss, 1.8, 1e-12));
        assert!(close(fit.coefs[1].std_error, (0.9f64 / 5.0).sqrt(), 1e-12));
        let t = 0.8 / (0.9f64 / 5.0).sqrt();
        assert!(close(fit.coefs[1].t, t, 1e-12));
        // With 2 df the t distribution has a closed form: P(|T| >= t) = 1 - t / sqrt(t^2 + 2).
        assert!(close(fit.coefs[1].p, 1.0 - t / (t * t + 2.0).sqrt(), 1e-12));
    }

    #[test]
    fn ols_rejects_degenerate_designs() {
        let x = [1.0, 1.0, 1.0, 1.0];
        assert!(ols(&[&[1.0; 4], &x], &[1.0, 2.0, 3.0, 4.0]).is_err());
        assert!(ols(&[&[1.0; 2], &[0.0, 1.0]], &[1.0, 2.0]).is_err());
    }

    #[test]
    fn interaction_model_exact_fit() {
        // A 3 x 3 grid of sizes and checkpoints, factors of 10 apart, so log10 is a = -1, 0, 1 (params) and
        // b = -1, 0, 1 (tokens) around their means, and acc exactly linear in a, b and a*b. Scaling divides a and
        // b by their sample sd sqrt(6/8) and acc by its own, so the scaled coefficients are known in closed form.
        let mut params = vec![];
        let mut tokens = vec![];
        let mut acc = vec![];
        for (i, p) in [1e8, 1e9, 1e10].iter().enumerate() {
            for (j, t) in [1e9, 1e10, 1e11].iter().enumerate() {
                let (a, b) = (i as f64 - 1.0, j as f64 - 1.0);
                params.push(*p);
                tokens.push(*t);
                acc.push(0.5 + 0.1 * a - 0.05 * b + 0.02 * a * b);
            }
        }
        // Exactly linear: (numerically) zero residuals, so the standard errors vanish.
        let fit = interaction_model(&params, &tokens, &acc).unwrap();
        assert_eq!(fit.df, 5);
        let m = acc.iter().sum::<f64>() / 9.0;
        let sd_y = (acc.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / 8.0).sqrt();
        let sd_x = (6.0f64 / 8.0).sqrt();
        assert!(close(fit.params.estimate, 0.1 * sd_x / sd_y, 1e-10));
        assert!(close(fit.tokens.estimate, -0.05 * sd_x / sd_y, 1e-10));
        assert!(close(fit.interaction.estimate, 0.02 * sd_x * sd_x / sd_y, 1e-10));
        assert!(fit.params.std_error < 1e-6 && fit.params.p < 1e-10);
    }

    #[test]
    fn quadratic_finds_the_dip() {
        // y = (x - 2)^2 + small noise on x = 0..=4: a U with its minimum at 2.
        let x = [0.0, 1.0, 2.0, 3.0, 4.0];
        let y = [4.01, 0.99, 0.0, 1.01, 3.99];
        let q = quadratic_fit(&x, &y).unwrap();
        assert!(q.curvature.estimate > 0.9 && q.curvature.estimate < 1.1);
        assert!(close(q.vertex, 2.0, 0.01));
        assert!(q.curvature.p < 0.001);
        assert_eq!(q.df, 2);
    }

    #[test]
    fn mcnemar_by_hand() {
        // b = 3, c = 0: P(X >= 3 | Bin(3, 1/2)) = 1/8.
        // (statrs' incomplete beta is good to about 1e-15 here.)
        assert!(close(mcnemar_exact_greater(3, 0), 0.125, 1e-13));
        // b = 2, c = 1: P(X >= 2 | Bin(3, 1/2)) = (3 + 1) / 8 = 0.5.
        assert!(close(mcnemar_exact_greater(2, 1), 0.5, 1e-13), "{}", mcnemar_exact_greater(2, 1));
        // b = 8, c = 2: (C(10,8) + C(10,9) + C(10,10)) / 1024 = 56 / 1024 (R: binom.test(8, 10, alt = "greater")).
        assert!(close(mcnemar_exact_greater(8, 2), 56.0 / 1024.0, 1e-13));
        // Far in the tail, relative precision holds: P(X >= 200 | Bin(200, 1/2)) = 2^-200.
        let p = mcnemar_exact_greater(200, 0);
        assert!((p / 0.5f64.powi(200) - 1.0).abs() < 1e-10, "{p}");
        assert_eq!(mcnemar_exact_greater(0, 0), 1.0);
        assert_eq!(mcnemar_exact_greater(0, 5), 1.0);
        let t = mcnemar_drop(&[1.0, 1.0, 1.0, 0.0], &[0.0, 0.0, 1.0, 0.0]).unwrap();
        assert_eq!((t.stat, t.effect), (2.0, 0.5));
        assert!(close(t.p, 0.25, 1e-13));
        assert!(mcnemar_drop(&[0.5], &[1.0]).is_none());
        assert!(mcnemar_drop(&[1.0], &[1.0, 0.0]).is_none());
    }

    #[test]
    fn paired_t_by_hand_and_zero_spread() {
        // d = 0.1, 0.2, 0.3: mean 0.2, sd 0.1, se 0.1 / sqrt(3), t = 2 sqrt(3) = 3.4641 on 2 df;
        // P(T >= t) = (1 - t / sqrt(t^2 + 2)) / 2 (closed form for 2 df).
        let t = paired_t_drop(&[0.5, 0.6, 0.7], &[0.4, 0.4, 0.4]).unwrap();
        let want_t = 2.0 * 3f64.sqrt();
        assert!(close(t.stat, want_t, 1e-12) && close(t.effect, 0.2, 1e-12));
        assert!(close(t.p, (1.0 - want_t / (want_t * want_t + 2.0).sqrt()) / 2.0, 1e-12), "{t:?}");
        // Every difference 0.1: no standard error, the sign test's 2^-4, and no NaN anywhere but t.
        let t = paired_t_drop(&[0.6; 4], &[0.5; 4]).unwrap();
        assert_eq!((t.se, t.p), (0.0, 0.0625));
        assert_eq!(paired_t_drop(&[0.5; 4], &[0.5; 4]).unwrap().p, 1.0);
        assert!(paired_t_drop(&[0.5], &[0.5]).is_none());
    }

    #[test]
    fn unpaired_approximations_never_divide_by_zero() {
        // 0.9992 of 1236 items against 0 (the row that used to read z = 1235): pooled se = sqrt(0.4996 * 0.5004 * 2 / 1236).
        let t = two_proportion_drop(0.9992, 0.0, 1236.0);
        let se = (0.4996f64 * 0.5004 * 2.0 / 1236.0).sqrt();
        assert!(close(t.stat, 0.9992 / se, 1e-9) && t.stat < 60.0, "{t:?}");
        assert_eq!(two_proportion_drop(1.0, 1.0, 100.0).p, 1.0);
        assert_eq!(two_proportion_drop(0.0, 0.0, 100.0).p, 1.0);
        assert!(two_mean_drop(0.5, 0.0, 0.4, 0.0).p.is_nan());
        let t = two_mean_drop(0.6, 0.03, 0.5, 0.04);
        assert!(close(t.stat, 2.0, 1e-12) && close(t.p, 0.022750131948179, 1e-9));
    }

    #[test]
    fn holm_matches_r() {
        // p.adjust(c(0.01, 0.04, 0.03, 0.5), "holm") = 0.04 0.09 0.09 0.5
        let q = p_adjust_holm(&[0.01, 0.04, 0.03, 0.5]);
        for (a, b) in q.iter().zip([0.04, 0.09, 0.09, 0.5]) {
            assert!(close(*a, b, 1e-15), "{q:?}");
        }
        let q = p_adjust_holm(&[0.9, f64::NAN, 0.8]);
        assert!(close(q[0], 1.0, 1e-15) && q[1].is_nan() && close(q[2], 1.0, 1e-15), "{q:?}");
    }
}
