//! The CPU backend's inner loops: sums, exp, GELU, written branch-free over fixed-width chunks so
//! the compiler vectorises them, and compiled twice — for baseline x86-64 (SSE2) and for AVX2 + FMA, chosen
//! at run time ([`multiversion!`]) — so one binary runs anywhere and uses the wide units where they exist.

/// True when the CPU has AVX2 and FMA (the detection is cached by std).
#[inline(always)]
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Define `fn name(args) -> ret { body }` twice: once as written, once with AVX2 + FMA enabled (the body
/// and everything `#[inline(always)]` it calls is compiled for those units), dispatching at run time.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn generic($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                generic($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if $crate::backend::cpu::math::has_avx2_fma() {
                // SAFETY: the CPU has the features `avx2` was compiled for.
                return unsafe { avx2($($arg),*) };
            }
            generic($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// Σ x[i] over 8 partial sums.
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let c = x.chunks_exact(8);
    let tail: f32 = c.remainder().iter().sum();
    for x in c {
        for i in 0..8 {
            acc[i] += x[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// exp(x) for x <= 0, within 2 ulp of libm: Cephes expf (Cody-Waite reduction by ln 2, degree-6 polynomial),
/// branch-free so that a loop over it vectorises.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer
                                     // exp(-87) ~ 1.6e-38, near the smallest normal f32; a softmax row's max term is 1, so smaller terms vanish
                                     // anyway. Written as a comparison, not `f32::max`, so that a NaN stays NaN (`max` would turn it into -87,
                                     // and a NaN logit would silently drop out of the softmax). Still one `maxps`.
    let x = if x < -87.0 { -87.0 } else { x };
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4; // x - n ln2, ln2 split into an exact head and a tail
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

multiversion! {
    /// (logsumexp, max) of a row in one pass: per block of 64, the block's max (vectorised) updates a running
    /// max (the running f64 sum is rescaled when it grows, which random rows do a handful of times), then the
    /// block's exps are summed in f32 and added in f64. A NaN anywhere makes the logsumexp NaN; the max is
    /// that of the other values.
    pub fn logsumexp_and_max(row: &[f32]) -> (f64, f32) {
        let mut buf = [0f32; 64];
        let (mut max, mut total) = (f32::NEG_INFINITY, 0f64);
        for chunk in row.chunks(64) {
            let mut lanes = [f32::NEG_INFINITY; 8];
            for part in chunk.chunks(8) {
                for (l, &v) in lanes.iter_mut().zip(part) {
                    *l = if v > *l { v } else { *l };
                }
            }
            let block_max = lanes.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
            if block_max > max {
                if total > 0.0 {
                    total *= ((max - block_max) as f64).exp();
                }
                max = block_max;
            }
            for (b, &v) in buf.iter_mut().zip(chunk) {
                *b = exp_nonpositive(v - max);
            }
            total += sum(&buf[..chunk.len()]) as f64;
        }
        (max as f64 + total.ln(), max)
    }
}

/// erf(x), branch-free: below |x| = 0.75 its Taylor series (8 terms, relative error < 1e-8 before rounding),
/// above it 1 - erfc(|x|) with Numerical Recipes' Chebyshev fit of erfc (relative error < 1.2e-7), whose
/// result there is >= 0.71 so that the subtraction loses nothing. Both are computed and one is selected, so a
/// loop over it vectorises.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let a2 = a * a;
    // 2/sqrt(pi) (a - a^3/3 + a^5/10 - a^7/42 + a^9/216 - a^11/1320 + a^13/9360 - a^15/75600)
    const SERIES: [f32; 8] = [
        1.0,
        -1.0 / 3.0,
        0.1,
        -1.0 / 42.0,
        1.0 / 216.0,
        -1.0 / 1320.0,
        1.0 / 9360.0,
        -1.0 / 75600.0,
    ];
    let mut s = SERIES[7];
    for &c in SERIES[..7].iter().rev() {
        s = s * a2 + c;
    }
    let small = std::f32::consts::FRAC_2_SQRT_PI * a * s;
    let t = 1.0 / (1.0 + 0.5 * a);
    #[allow(clippy::excessive_precision)] // Numerical Recipes' coefficients as published
    const ERFC: [f32; 10] = [
        -1.265_512_2,
        1.000_023_7,
        0.374_091_96,
        0.096_784_18,
        -0.186_288_06,
        0.278_868_07,
        -1.135_203_9,
        1.488_515_9,
        -0.822_152_2,
        0.170_872_77,
    ];
    let mut p = ERFC[9];
    for &c in ERFC[..9].iter().rev() {
        p = p * t + c;
    }
    let large = 1.0 - t * exp_nonpositive(p - a2); // the exponent is negative for every a >= 0.75
    let y = if a < 0.75 { small } else { large };
    y.copysign(x)
}

/// GELU, 0.5 x (1 + erf(x / sqrt 2)) as torch.nn.functional.gelu, within 1.2e-7 of it relative to |x|.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

multiversion! {
    /// x[i] = gelu(x[i] + b[i]) over one row.
    pub fn bias_gelu_row(x: &mut [f32], b: &[f32]) {
        for (v, bias) in x.iter_mut().zip(b) {
            *v = gelu(*v + bias);
        }
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
    fn nan_propagates_through_exp() {
        assert!(exp_nonpositive(f32::NAN).is_nan());
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), exp_nonpositive(-87.0));
    }

    #[test]
    fn one_pass_logsumexp_matches_f64() {
        let mut r = crate::testing::Rng(11);
        for (n, spread) in [(50304, 30.0), (1, 1.0), (65, 5.0), (1000, 80.0)] {
            let mut row: Vec<f32> = r.values(n, spread);
            if n > 100 {
                row[n - 1] = 500.0; // the max in the last block: every earlier block rescaled
            }
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let exact = max as f64 + row.iter().map(|&v| (v as f64 - max as f64).exp()).sum::<f64>().ln();
            let (lse, got_max) = logsumexp_and_max(&row);
            assert_eq!(got_max, max);
            assert!((lse - exact).abs() < 1e-6 * exact.abs().max(1.0), "n {n}: {lse} vs {exact}");
        }
        let (lse, max) = logsumexp_and_max(&[f32::NEG_INFINITY; 100]);
        assert!(lse.is_nan() && max == f32::NEG_INFINITY, "an all -inf row has no logsumexp");
        let mut row = vec![1.0f32; 100];
        row[50] = f32::NAN;
        assert!(logsumexp_and_max(&row).0.is_nan());
    }

    #[test]
    fn gelu_matches_the_exact_erf_form() {
        let mut worst = 0f64;
        for i in -300_000..=300_000 {
            let x = i as f32 * 1e-4; // -30 .. 30
            let want = 0.5 * x as f64 * (1.0 + libm::erf(x as f64 / std::f64::consts::SQRT_2));
            worst = worst.max((gelu(x) as f64 - want).abs() / (x as f64).abs().max(1e-30));
        }
        assert!(worst < 1.3e-7, "worst error relative to |x|: {worst:e}");
        assert!(gelu(f32::NAN).is_nan());
        assert_eq!((gelu(-200.0), gelu(200.0)), (0.0, 200.0));
    }

    #[test]
    fn sum_matches_f64_at_every_length() {
        let mut r = crate::testing::Rng(9);
        for n in 0..100 {
            let a = r.values(n, 1.0);
            let want: f64 = a.iter().map(|x| *x as f64).sum();
            assert!((sum(&a) as f64 - want).abs() < 1e-5, "sum, length {n}");
        }
    }
}
