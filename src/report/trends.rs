//! Trend flags per (task, model) over training checkpoints:
//!
//! * **Inverse scaling over training**: accuracy at the last checkpoint is significantly below the
//!   best earlier checkpoint. One-sided z test on the difference, z = (best - last) / sqrt(se_best^2 +
//!   se_last^2) from the reported standard errors, flagged when p < 0.05. Caveats written into the
//!   output: the best earlier checkpoint is picked after looking (which favours a drop), both
//!   accuracies come from the same items (not independent samples), and there is no correction over
//!   the many (task, model) pairs.
//! * **U-shaped / inverted-U**: least-squares quadratic `acc ~ 1 + x + x^2` in x = log10(tokens) over
//!   the model's checkpoints; flagged when the x^2 coefficient is significant (two-sided t test,
//!   df = checkpoints - 3, p < 0.05) and the parabola's extremum lies strictly inside the range of
//!   checkpoints. x^2 > 0: U-shaped (falls, then recovers); x^2 < 0: inverted U (rises, then falls).

use super::{series_by_task, size_label, task_display_name, ResultRow, Series};
use crate::stats::{quadratic_fit, z_test_greater};
use std::fmt::Write as _;

/// Significance level of both flags.
pub const ALPHA: f64 = 0.05;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Significant positive curvature with the minimum inside the range.
    U,
    /// Significant negative curvature with the maximum inside the range.
    InvertedU,
    /// Tested, not flagged.
    None,
    /// Fewer than 4 checkpoints (or a degenerate fit): no test.
    NotTested,
}

impl Shape {
    pub fn as_str(self) -> &'static str {
        match self {
            Shape::U => "U-shaped",
            Shape::InvertedU => "inverted-U",
            Shape::None => "none",
            Shape::NotTested => "NA",
        }
    }
}

/// The flags of one model on one task.
#[derive(Debug, Clone)]
pub struct TrendRow {
    pub task: String,
    pub model: String,
    pub params: f64,
    /// Checkpoints with tokens > 0.
    pub checkpoints: usize,
    pub last_step: u64,
    pub last_acc: f64,
    pub last_se: f64,
    /// Best checkpoint before the last (earliest on ties); `None` with a single checkpoint.
    pub best_step: Option<u64>,
    pub best_acc: f64,
    pub best_se: f64,
    /// (best - last) / sqrt(se_best^2 + se_last^2); NaN without an earlier checkpoint.
    pub drop_z: f64,
    /// One-sided p of `drop_z`.
    pub drop_p: f64,
    /// best - last > 0 with drop_p < ALPHA.
    pub inverse_scaling: bool,
    /// x^2 coefficient of the quadratic in log10(tokens), its t, df and two-sided p (NaN if untested).
    pub curvature: f64,
    pub curvature_t: f64,
    pub curvature_df: usize,
    pub curvature_p: f64,
    /// Tokens at the parabola's extremum.
    pub vertex_tokens: f64,
    pub shape: Shape,
}

/// Flags for every (task, model), tasks sorted by id, models by size.
pub fn trend_flags(rows: &[ResultRow]) -> Vec<TrendRow> {
    let mut out = Vec::new();
    for (task, series) in series_by_task(rows) {
        for s in series {
            if let Some(r) = flags(&task, &s) {
                out.push(r);
            }
        }
    }
    out
}

fn flags(task: &str, s: &Series) -> Option<TrendRow> {
    let (_, last_acc, last_se, last_step) = *s.points.last()?;
    let earlier = &s.points[..s.points.len() - 1];
    // Best earlier checkpoint; the first one wins ties.
    let best = earlier.iter().fold(None::<&(f64, f64, f64, u64)>, |b, p| match b {
        Some(b) if b.1 >= p.1 => Some(b),
        _ => Some(p),
    });
    let (best_step, best_acc, best_se, drop_z, drop_p) = match best {
        Some(&(_, acc, se, step)) => {
            let (z, p) = z_test_greater(acc, se, last_acc, last_se);
            (Some(step), acc, se, z, p)
        }
        None => (None, f64::NAN, f64::NAN, f64::NAN, f64::NAN),
    };
    let inverse_scaling = best_acc > last_acc && drop_p < ALPHA;

    let x: Vec<f64> = s.points.iter().map(|p| p.0.log10()).collect();
    let y: Vec<f64> = s.points.iter().map(|p| p.1).collect();
    let (mut curvature, mut curvature_t, mut curvature_df, mut curvature_p, mut vertex_tokens, mut shape) =
        (f64::NAN, f64::NAN, 0, f64::NAN, f64::NAN, Shape::NotTested);
    if let Ok(q) = quadratic_fit(&x, &y) {
        if q.curvature.t.is_finite() {
            curvature = q.curvature.estimate;
            curvature_t = q.curvature.t;
            curvature_df = q.df;
            curvature_p = q.curvature.p;
            vertex_tokens = 10f64.powf(q.vertex);
            let (lo, hi) = (x[0], x[x.len() - 1]);
            let inside = q.vertex > lo && q.vertex < hi;
            shape = if q.curvature.p < ALPHA && inside {
                if curvature > 0.0 {
                    Shape::U
                } else {
                    Shape::InvertedU
                }
            } else {
                Shape::None
            };
        }
    }
    Some(TrendRow {
        task: task.to_string(),
        model: s.model.clone(),
        params: s.params,
        checkpoints: s.points.len(),
        last_step,
        last_acc,
        last_se,
        best_step,
        best_acc,
        best_se,
        drop_z,
        drop_p,
        inverse_scaling,
        curvature,
        curvature_t,
        curvature_df,
        curvature_p,
        vertex_tokens,
        shape,
    })
}

fn num(x: f64, decimals: usize) -> String {
    if x.is_nan() {
        "NA".into()
    } else if x.is_infinite() {
        if x > 0.0 { "Inf" } else { "-Inf" }.into()
    } else {
        format!("{x:.decimals$}")
    }
}

fn pval(p: f64) -> String {
    if p.is_nan() {
        "NA".into()
    } else if p < 0.001 {
        "<0.001".into()
    } else {
        format!("{p:.3}")
    }
}

fn tokens_label(t: f64) -> String {
    if t.is_nan() {
        "NA".into()
    } else {
        format!("{:.1}B", t / 1e9)
    }
}

/// Machine-readable flags: one row per (task, model); p-values unrounded.
pub fn format_trends_tsv(rows: &[TrendRow]) -> String {
    let mut s = String::from(
        "task\tmodel\tcheckpoints\tlast_step\tlast_acc\tlast_se\tbest_earlier_step\tbest_earlier_acc\tbest_earlier_se\t\
         drop_z\tdrop_p_one_sided\tinverse_scaling\tcurvature\tcurvature_t\tcurvature_df\tcurvature_p\tvertex_tokens\tshape\n",
    );
    for r in rows {
        let opt = |v: f64| if v.is_nan() { "NA".to_string() } else { format!("{v}") };
        let _ = writeln!(
            s,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            r.task,
            r.model,
            r.checkpoints,
            r.last_step,
            r.last_acc,
            r.last_se,
            r.best_step.map(|s| s.to_string()).unwrap_or_else(|| "NA".into()),
            opt(r.best_acc),
            opt(r.best_se),
            opt(r.drop_z),
            opt(r.drop_p),
            if r.inverse_scaling { "yes" } else { "no" },
            opt(r.curvature),
            opt(r.curvature_t),
            if r.shape == Shape::NotTested {
                "NA".to_string()
            } else {
                r.curvature_df.to_string()
            },
            opt(r.curvature_p),
            opt(r.vertex_tokens.round()),
            r.shape.as_str(),
        );
    }
    s
}

/// Human-readable flags with their definitions: flagged cases first, then every (task, model).
pub fn format_trends_markdown(rows: &[TrendRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Trends over training\n");
    let _ = writeln!(s, "Definitions (per task and model, over its checkpoints; step 0 left out):\n");
    let _ = writeln!(
        s,
        "- **Inverse scaling over training**: the accuracy at the last checkpoint is significantly below the best \
         earlier checkpoint. One-sided z test on the difference, z = (best - last) / sqrt(se_best^2 + se_last^2), \
         using the reported standard errors; flagged when p < {ALPHA}. Caveats: the best earlier checkpoint is chosen \
         after looking at the data (this favours finding a drop), both accuracies are measured on the same items (so \
         they are not independent samples), and p is not corrected over the {} (task, model) pairs.",
        rows.len()
    );
    let _ = writeln!(
        s,
        "- **U-shaped / inverted-U**: least-squares quadratic acc ~ 1 + x + x^2 with x = log10(training tokens); \
         flagged when the x^2 coefficient is significant (two-sided t test, df = checkpoints - 3, p < {ALPHA}) and \
         the fitted extremum lies strictly inside the range of checkpoints. x^2 > 0 is U-shaped (accuracy falls, \
         then recovers); x^2 < 0 is an inverted U (accuracy rises, then falls). Not corrected for multiple tests \
         either.\n"
    );

    let label = |r: &TrendRow| size_label(&r.model).unwrap_or_else(|| r.model.clone());
    let inverse: Vec<&TrendRow> = rows.iter().filter(|r| r.inverse_scaling).collect();
    let _ = writeln!(s, "## Inverse scaling over training: {} of {} flagged\n", inverse.len(), rows.len());
    if !inverse.is_empty() {
        let _ = writeln!(
            s,
            "| Task | Model | Best earlier (step: acc) | Last (step: acc) | Drop | z | p (one-sided) |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        for r in &inverse {
            let _ = writeln!(
                s,
                "| {} | {} | {}: {:.4} | {}: {:.4} | {:.4} | {} | {} |",
                task_display_name(&r.task),
                label(r),
                r.best_step.unwrap_or(0),
                r.best_acc,
                r.last_step,
                r.last_acc,
                r.best_acc - r.last_acc,
                num(r.drop_z, 2),
                pval(r.drop_p)
            );
        }
        s.push('\n');
    }
    let shaped: Vec<&TrendRow> = rows.iter().filter(|r| matches!(r.shape, Shape::U | Shape::InvertedU)).collect();
    let _ = writeln!(s, "## U-shaped / inverted-U: {} of {} flagged\n", shaped.len(), rows.len());
    if !shaped.is_empty() {
        let _ = writeln!(s, "| Task | Model | Shape | Curvature | t | p | Extremum at |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        for r in &shaped {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | t({})={} | {} | {} tokens |",
                task_display_name(&r.task),
                label(r),
                r.shape.as_str(),
                num(r.curvature, 4),
                r.curvature_df,
                num(r.curvature_t, 2),
                pval(r.curvature_p),
                tokens_label(r.vertex_tokens)
            );
        }
        s.push('\n');
    }
    let _ = writeln!(s, "## All tasks and models\n");
    let _ = writeln!(
        s,
        "| Task | Model | Checkpoints | Last acc | Best earlier acc | Drop p | Inverse scaling | Curvature p | Shape |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.4} | {} | {} | {} | {} | {} |",
            task_display_name(&r.task),
            label(r),
            r.checkpoints,
            r.last_acc,
            num(r.best_acc, 4),
            pval(r.drop_p),
            if r.inverse_scaling { "yes" } else { "no" },
            pval(r.curvature_p),
            r.shape.as_str()
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(accs: &[(u64, f64)]) -> Vec<ResultRow> {
        accs.iter()
            .map(|&(step, acc)| ResultRow {
                model: "EleutherAI/pythia-1b".into(),
                revision: format!("step{step}"),
                task: "t".into(),
                accuracy: acc,
                accuracy_se: 0.01,
            })
            .collect()
    }

    #[test]
    fn drop_and_inverted_u() {
        // Rises then falls by 0.1 (7 standard errors of the difference): inverse scaling and an inverted U.
        let r = trend_flags(&rows(&[
            (1000, 0.5),
            (2000, 0.6),
            (4000, 0.7),
            (8000, 0.72),
            (16000, 0.7),
            (32000, 0.6),
            (64000, 0.5),
        ]));
        assert_eq!(r.len(), 1);
        assert!(r[0].inverse_scaling, "{r:?}");
        assert_eq!(r[0].best_step, Some(8000));
        assert_eq!(r[0].shape, Shape::InvertedU);
        let v = r[0].vertex_tokens;
        assert!(v > 4000.0 * 2_097_152.0 && v < 16000.0 * 2_097_152.0, "{v}");
    }

    #[test]
    fn monotone_rise_is_not_flagged() {
        let r = trend_flags(&rows(&[(1000, 0.5), (2000, 0.56), (4000, 0.59), (8000, 0.66), (16000, 0.69)]));
        assert!(!r[0].inverse_scaling);
        assert_eq!(r[0].shape, Shape::None);
        // Too few checkpoints for a quadratic: not tested, but the drop test still runs.
        let r = trend_flags(&rows(&[(1000, 0.7), (2000, 0.5)]));
        assert!(r[0].inverse_scaling);
        assert_eq!(r[0].shape, Shape::NotTested);
    }
}
