//! Trend flags per (task, model) over training checkpoints.
//!
//! * **Inverse scaling over training**: the metric at the last checkpoint is below an earlier checkpoint by
//!   more than chance explains. The last checkpoint is compared with *each* earlier one by a one-sided test
//!   of a decline; with per-item data (a results store) the test is paired, on the same items: McNemar's
//!   exact test for 0/1 metrics (acc, acc_norm, MC1), a paired t test for MC2. From a table of aggregates
//!   alone (a TSV) only an unpaired approximation is possible (see [`TestKind`]).
//!   The choice among the m earlier checkpoints is corrected by Bonferroni on the smallest p:
//!   p = min(1, m * min_k p_k), which is Holm's smallest adjusted p. Why not the "best earlier checkpoint"
//!   (the old flag): the maximum of m noisy estimates is biased upward, so a test against it is too
//!   liberal. Why Bonferroni and not a max-statistic permutation: it is valid under any dependence among the
//!   m comparisons (they share the last checkpoint and neighbouring checkpoints are correlated), needs no
//!   resampling, and is exact to state; its cost, some conservatism when comparisons are correlated, is
//!   small when one comparison dominates, which is the case a real decline produces.
//! * **U-shaped / inverted-U**: least-squares quadratic `y ~ 1 + x + x^2` in x = log10(tokens) over the
//!   checkpoints; the x^2 coefficient's two-sided t test (df = checkpoints - 3), with the extremum strictly
//!   inside the range of checkpoints.
//!
//! Every p of both flags in one report is then adjusted together by Benjamini-Hochberg; a flag is raised at
//! q < [`ALPHA`]. BH controls the false-discovery rate for independent or positively dependent tests
//! (Benjamini & Yekutieli 2001), which is what tests on the same items across models and checkpoints are.

use super::{series_by_task, size_label, task_display_name, ResultRow, Series};
use crate::stats::{mcnemar_drop, p_adjust_bh, paired_t_drop, quadratic_fit, two_mean_drop, two_proportion_drop, DropTest};
use std::collections::HashMap;
use std::fmt::Write as _;

/// False-discovery rate at which flags are raised (BH-adjusted q below it).
pub const ALPHA: f64 = 0.05;

/// Per-item values of the reported metric (one per document, in document order) for each (model,
/// checkpoint step, task id), and each task's chance level: what paired tests and the figure's chance lines
/// are computed from. Held by a results store; absent from a TSV of aggregates.
#[derive(Debug, Clone, Default)]
pub struct ItemData {
    values: HashMap<(String, u64, String), Vec<f64>>,
    /// Task id -> expected metric of a uniformly random guess, averaged over the task's documents.
    pub chance: HashMap<String, f64>,
}

impl ItemData {
    /// Add one run's per-document values of a task (the task id as in [`ResultRow::task`]). A revision that
    /// is not `stepN` is ignored: such runs are not in the trend series.
    pub fn insert(&mut self, model: &str, revision: &str, task: &str, values: Vec<f64>) {
        if let Some(step) = super::parse_step(revision) {
            self.values.insert((model.to_string(), step, task.to_string()), values);
        }
    }

    fn get(&self, model: &str, step: u64, task: &str) -> Option<&[f64]> {
        self.values.get(&(model.to_string(), step, task.to_string())).map(Vec::as_slice)
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// Which test compared the last checkpoint with the earlier ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestKind {
    /// Paired, 0/1 per item: McNemar's exact test (the statistic is b, items right before and wrong at the last).
    McNemar,
    /// Paired, continuous per item (MC2): paired t test, df = items - 1.
    PairedT,
    /// Unpaired, proportions: pooled two-proportion z test with the item count implied by accuracy and its
    /// standard error (lm-eval's se = sqrt(p (1 - p) / (n - 1))).
    UnpairedProportions,
    /// Unpaired, means (MC2): z = difference / sqrt(se1^2 + se2^2).
    UnpairedMeans,
    /// No earlier checkpoint, or no test possible.
    None,
}

impl TestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TestKind::McNemar => "mcnemar-exact",
            TestKind::PairedT => "paired-t",
            TestKind::UnpairedProportions => "unpaired-z-proportions",
            TestKind::UnpairedMeans => "unpaired-z-means",
            TestKind::None => "NA",
        }
    }

    pub fn paired(self) -> bool {
        matches!(self, TestKind::McNemar | TestKind::PairedT)
    }
}

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
    /// The test used for the decline (the same for every earlier checkpoint of the row).
    pub test: TestKind,
    /// Earlier checkpoints compared with the last (those a test was possible for).
    pub comparisons: usize,
    /// Paired items per comparison (None for unpaired tests).
    pub items: Option<usize>,
    /// The earlier checkpoint whose comparison gave the smallest p (earliest on ties); None if untested.
    pub drop_step: Option<u64>,
    /// The metric at that checkpoint.
    pub drop_earlier_acc: f64,
    /// Effect size: earlier minus last (positive: a decline), mean over items.
    pub drop_effect: f64,
    /// The standard error of the effect (NaN for McNemar, which needs none).
    pub drop_se: f64,
    /// The statistic of that comparison: b for McNemar, t or z otherwise.
    pub drop_stat: f64,
    /// One-sided p of that comparison alone.
    pub drop_p_min: f64,
    /// Corrected for the choice among earlier checkpoints: min(1, comparisons x drop_p_min).
    pub drop_p: f64,
    /// Benjamini-Hochberg q of `drop_p` over every p of the report's flags.
    pub drop_q: f64,
    /// drop_q < ALPHA with a positive effect.
    pub inverse_scaling: bool,
    /// x^2 coefficient of the quadratic in log10(tokens), its t, df and two-sided p (NaN if untested).
    pub curvature: f64,
    pub curvature_t: f64,
    pub curvature_df: usize,
    pub curvature_p: f64,
    /// BH q of `curvature_p`, adjusted with the drop tests.
    pub curvature_q: f64,
    /// Tokens at the parabola's extremum.
    pub vertex_tokens: f64,
    /// The extremum lies strictly inside the range of checkpoints.
    pub vertex_inside: bool,
    pub shape: Shape,
}

/// Flags for every (task, model) from aggregates only (the unpaired approximation).
pub fn trend_flags(rows: &[ResultRow]) -> Vec<TrendRow> {
    trend_flags_with(rows, None)
}

/// Flags for every (task, model), tasks sorted by id, models by size: paired tests where `items` holds the
/// per-item values of every checkpoint of the series, the unpaired approximation elsewhere.
pub fn trend_flags_with(rows: &[ResultRow], items: Option<&ItemData>) -> Vec<TrendRow> {
    let mut out = Vec::new();
    for (task, series) in series_by_task(rows) {
        let n_items = implied_items(&series);
        for s in &series {
            if let Some(r) = flags(&task, s, items, n_items) {
                out.push(r);
            }
        }
    }
    // One Benjamini-Hochberg family: every p that can raise a flag in this report (NaN: untested, not counted).
    let mut all: Vec<f64> = out.iter().map(|r| r.drop_p).collect();
    all.extend(out.iter().map(|r| r.curvature_p));
    let q = p_adjust_bh(&all);
    let n = out.len();
    for (i, r) in out.iter_mut().enumerate() {
        r.drop_q = q[i];
        r.curvature_q = q[n + i];
        r.inverse_scaling = r.drop_q < ALPHA && r.drop_effect > 0.0;
        if r.shape != Shape::NotTested {
            r.shape = match (r.curvature_q < ALPHA && r.vertex_inside, r.curvature > 0.0) {
                (true, true) => Shape::U,
                (true, false) => Shape::InvertedU,
                (false, _) => Shape::None,
            };
        }
    }
    out
}

/// With per-item data given, a warning naming the rows that still got the unpaired approximation (a checkpoint
/// of theirs has no per-item values, or values over other items).
pub(crate) fn unpaired_warning(rows: &[TrendRow], items: Option<&ItemData>) -> Option<String> {
    items.filter(|i| !i.is_empty())?;
    let unpaired: Vec<String> = rows
        .iter()
        .filter(|r| !r.test.paired() && r.checkpoints > 1)
        .map(|r| format!("{} / {}", r.task, r.model))
        .collect();
    if unpaired.is_empty() {
        return None;
    }
    let shown = unpaired.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    let more = if unpaired.len() > 5 {
        format!(" and {} more", unpaired.len() - 5)
    } else {
        String::new()
    };
    Some(format!(
        "trend tests of {} (task, model) pairs are the unpaired approximation: some checkpoint has no per-item values over the same items ({shown}{more})",
        unpaired.len()
    ))
}

/// MC2 is a probability mass per item, not 0/1: it gets the tests for means.
fn is_mc2(task: &str) -> bool {
    task.ends_with("mc2")
}

/// Items per checkpoint implied by proportions and their standard errors (lm-eval's se = sqrt(p (1 - p) /
/// (n - 1)), so n = p (1 - p) / se^2 + 1): the median over the task's checkpoints with 0 < p < 1, for the
/// unpaired approximation at p = 0 or 1, where a row's own standard error is 0 and says nothing.
fn implied_items(series: &[Series]) -> f64 {
    let mut n: Vec<f64> = series
        .iter()
        .flat_map(|s| &s.points)
        .filter(|p| p.1 > 0.0 && p.1 < 1.0 && p.2 > 0.0)
        .map(|p| p.1 * (1.0 - p.1) / (p.2 * p.2) + 1.0)
        .filter(|n| n.is_finite())
        .collect();
    if n.is_empty() {
        return f64::NAN;
    }
    n.sort_by(f64::total_cmp);
    n[n.len() / 2].round()
}

fn flags(task: &str, s: &Series, items: Option<&ItemData>, n_items: f64) -> Option<TrendRow> {
    let (_, last_acc, last_se, last_step) = *s.points.last()?;
    let earlier = &s.points[..s.points.len() - 1];

    // Paired when every checkpoint of the series has per-item values over the same items.
    let paired: Option<Vec<&[f64]>> = items.and_then(|d| {
        let v: Option<Vec<&[f64]>> = s.points.iter().map(|p| d.get(&s.model, p.3, task)).collect();
        v.filter(|v| v.iter().all(|x| x.len() == v[0].len() && !x.is_empty()))
    });
    let kind = match (&paired, is_mc2(task)) {
        (Some(_), false) => TestKind::McNemar,
        (Some(_), true) => TestKind::PairedT,
        (None, false) if n_items.is_finite() => TestKind::UnpairedProportions,
        (None, _) => TestKind::UnpairedMeans,
    };
    let tests: Vec<Option<DropTest>> = earlier
        .iter()
        .enumerate()
        .map(|(k, e)| match (kind, &paired) {
            (TestKind::McNemar, Some(v)) => mcnemar_drop(v[k], v[v.len() - 1]),
            (TestKind::PairedT, Some(v)) => paired_t_drop(v[k], v[v.len() - 1]),
            (TestKind::UnpairedProportions, _) => Some(two_proportion_drop(e.1, last_acc, n_items)),
            _ => Some(two_mean_drop(e.1, e.2, last_acc, last_se)),
        })
        .map(|t| t.filter(|t| !t.p.is_nan()))
        .collect();
    let comparisons = tests.iter().flatten().count();
    // The comparison with the smallest p; the earliest wins ties.
    let best = tests
        .iter()
        .enumerate()
        .filter_map(|(k, t)| t.map(|t| (k, t)))
        .fold(None::<(usize, DropTest)>, |b, (k, t)| match b {
            Some(b) if b.1.p <= t.p => Some(b),
            _ => Some((k, t)),
        });
    let (drop_step, drop_earlier_acc, d) = match best {
        Some((k, t)) => (Some(earlier[k].3), earlier[k].1, t),
        None => (
            None,
            f64::NAN,
            DropTest {
                effect: f64::NAN,
                se: f64::NAN,
                stat: f64::NAN,
                p: f64::NAN,
            },
        ),
    };
    let test = if comparisons == 0 { TestKind::None } else { kind };

    let x: Vec<f64> = s.points.iter().map(|p| p.0.log10()).collect();
    let y: Vec<f64> = s.points.iter().map(|p| p.1).collect();
    let (mut curvature, mut curvature_t, mut curvature_df, mut curvature_p) = (f64::NAN, f64::NAN, 0, f64::NAN);
    let (mut vertex_tokens, mut vertex_inside, mut shape) = (f64::NAN, false, Shape::NotTested);
    if let Ok(q) = quadratic_fit(&x, &y) {
        if q.curvature.t.is_finite() {
            curvature = q.curvature.estimate;
            curvature_t = q.curvature.t;
            curvature_df = q.df;
            curvature_p = q.curvature.p;
            vertex_tokens = 10f64.powf(q.vertex);
            vertex_inside = q.vertex > x[0] && q.vertex < x[x.len() - 1];
            shape = Shape::None; // decided after the BH adjustment
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
        test,
        comparisons,
        items: paired.as_ref().map(|v| v[0].len()),
        drop_step,
        drop_earlier_acc,
        drop_effect: d.effect,
        drop_se: d.se,
        drop_stat: d.stat,
        drop_p_min: d.p,
        drop_p: if comparisons == 0 {
            f64::NAN
        } else {
            (d.p * comparisons as f64).min(1.0)
        },
        drop_q: f64::NAN,
        inverse_scaling: false,
        curvature,
        curvature_t,
        curvature_df,
        curvature_p,
        curvature_q: f64::NAN,
        vertex_tokens,
        vertex_inside,
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

/// The statistic as printed: `b=12, c=3` for McNemar (c recovered from the effect), `t(816)=3.21`, `z=2.50`.
fn statistic(r: &TrendRow) -> String {
    match (r.test, r.items) {
        (TestKind::McNemar, Some(n)) => {
            let b = r.drop_stat;
            let c = (b - r.drop_effect * n as f64).round();
            format!("b={b}, c={c}")
        }
        (TestKind::PairedT, Some(n)) if r.drop_stat.is_finite() => format!("t({})={}", n - 1, num(r.drop_stat, 2)),
        (TestKind::PairedT, _) => "sign test (no spread)".into(),
        (TestKind::UnpairedProportions | TestKind::UnpairedMeans, _) => format!("z={}", num(r.drop_stat, 2)),
        _ => "NA".into(),
    }
}

/// Machine-readable flags: one row per (task, model); p- and q-values unrounded.
pub fn format_trends_tsv(rows: &[TrendRow]) -> String {
    let mut s = String::from(
        "task\tmodel\tcheckpoints\tlast_step\tlast_acc\tlast_se\tdrop_test\tdrop_items\tdrop_comparisons\tdrop_step\tdrop_earlier_acc\t\
         drop_effect\tdrop_se\tdrop_stat\tdrop_p_min\tdrop_p\tdrop_q\tinverse_scaling\tcurvature\tcurvature_t\tcurvature_df\tcurvature_p\t\
         curvature_q\tvertex_tokens\tshape\n",
    );
    let opt = |v: f64| if v.is_nan() { "NA".to_string() } else { format!("{v}") };
    for r in rows {
        let fields = [
            r.task.clone(),
            r.model.clone(),
            r.checkpoints.to_string(),
            r.last_step.to_string(),
            opt(r.last_acc),
            opt(r.last_se),
            r.test.as_str().to_string(),
            r.items.map(|n| n.to_string()).unwrap_or_else(|| "NA".into()),
            r.comparisons.to_string(),
            r.drop_step.map(|s| s.to_string()).unwrap_or_else(|| "NA".into()),
            opt(r.drop_earlier_acc),
            opt(r.drop_effect),
            opt(r.drop_se),
            opt(r.drop_stat),
            opt(r.drop_p_min),
            opt(r.drop_p),
            opt(r.drop_q),
            if r.inverse_scaling { "yes" } else { "no" }.to_string(),
            opt(r.curvature),
            opt(r.curvature_t),
            if r.shape == Shape::NotTested {
                "NA".to_string()
            } else {
                r.curvature_df.to_string()
            },
            opt(r.curvature_p),
            opt(r.curvature_q),
            opt(r.vertex_tokens.round()),
            r.shape.as_str().to_string(),
        ];
        let _ = writeln!(s, "{}", fields.join("\t"));
    }
    s
}

/// Human-readable flags with their definitions: flagged cases first, then every (task, model).
pub fn format_trends_markdown(rows: &[TrendRow]) -> String {
    let mut s = String::new();
    let paired = rows.iter().filter(|r| r.test.paired()).count();
    let unpaired = rows
        .iter()
        .filter(|r| matches!(r.test, TestKind::UnpairedProportions | TestKind::UnpairedMeans))
        .count();
    let tested = rows.iter().filter(|r| !r.drop_p.is_nan()).count() + rows.iter().filter(|r| !r.curvature_p.is_nan()).count();
    let _ = writeln!(s, "# Trends over training\n");
    let _ = writeln!(s, "Definitions (per task and model, over its checkpoints; step 0 left out):\n");
    let _ = writeln!(
        s,
        "- **Inverse scaling over training**: the metric at the last checkpoint is below an earlier checkpoint by more \
         than chance explains. The last checkpoint is compared with each earlier one by a one-sided test of a decline, and \
         the smallest p is corrected for the choice among the m earlier checkpoints by Bonferroni, p = min(1, m x min p) \
         (Holm's smallest adjusted p; valid however the comparisons depend on each other). Not against the best earlier \
         checkpoint: the maximum of m noisy estimates is biased upward. Effect = earlier - last, in the metric's units \
         (a positive effect is a decline)."
    );
    let _ = writeln!(
        s,
        "  - Paired tests, on the same items (per-item data from a results store): McNemar's exact test for 0/1 metrics \
         (acc, acc_norm, MC1; b = items right at the earlier checkpoint and wrong at the last, c = the reverse, \
         p = P(X >= b), X ~ Binomial(b + c, 1/2)), and a paired t test for MC2 (df = items - 1; if every difference is the \
         same, the exact sign test). {paired} of {} rows.",
        rows.len()
    );
    let _ = writeln!(
        s,
        "  - Unpaired approximation, from aggregates alone (a TSV has no per-item data, so no paired test is possible): \
         the pooled two-proportion z test with the item count implied by accuracy and its standard error, and for MC2 \
         z = difference / sqrt(se1^2 + se2^2). It ignores that both checkpoints answered the same items. {unpaired} of {} rows.",
        rows.len()
    );
    let _ = writeln!(
        s,
        "- **U-shaped / inverted-U**: least-squares quadratic y ~ 1 + x + x^2 with x = log10(training tokens); the x^2 \
         coefficient's two-sided t test (df = checkpoints - 3), flagged when significant and the fitted extremum lies \
         strictly inside the range of checkpoints. x^2 > 0 is U-shaped (falls, then recovers); x^2 < 0 an inverted U."
    );
    let _ = writeln!(
        s,
        "- **Multiple testing**: every p above ({tested} of them: both flags, every task and model of this report) is \
         adjusted together by Benjamini-Hochberg; a flag is raised when q < {ALPHA} (false-discovery rate {ALPHA}).\n"
    );

    // The size as label, unless two models of one task share it (pythia-70m and pythia-70m-deduped): then the name.
    let label = |r: &TrendRow| {
        let size = size_label(&r.model);
        let shared = rows
            .iter()
            .any(|o| o.task == r.task && o.model != r.model && size_label(&o.model) == size);
        match size {
            Some(s) if !shared => s,
            _ => {
                // The last path segment, unless another model of the task has the same one (`pythia-70m` and
                // `EleutherAI/pythia-70m` are two models): then the full name.
                let short = |m: &str| m.rsplit('/').next().unwrap_or(m).to_string();
                let clash = rows
                    .iter()
                    .any(|o| o.task == r.task && o.model != r.model && short(&o.model) == short(&r.model));
                if clash {
                    r.model.clone()
                } else {
                    short(&r.model)
                }
            }
        }
    };
    let inverse: Vec<&TrendRow> = rows.iter().filter(|r| r.inverse_scaling).collect();
    let _ = writeln!(
        s,
        "## Inverse scaling over training: {} of {} flagged (q < {ALPHA})\n",
        inverse.len(),
        rows.len()
    );
    if !inverse.is_empty() {
        let _ = writeln!(
            s,
            "| Task | Model | Earlier (step: value) | Last (step: value) | Effect | Test | Statistic | p (one comparison) | p (corrected, m) | q |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
        for r in &inverse {
            let _ = writeln!(
                s,
                "| {} | {} | {}: {:.4} | {}: {:.4} | {} | {} | {} | {} | {} ({}) | {} |",
                task_display_name(&r.task),
                label(r),
                r.drop_step.unwrap_or(0),
                r.drop_earlier_acc,
                r.last_step,
                r.last_acc,
                num(r.drop_effect, 4),
                r.test.as_str(),
                statistic(r),
                pval(r.drop_p_min),
                pval(r.drop_p),
                r.comparisons,
                pval(r.drop_q)
            );
        }
        s.push('\n');
    }
    let shaped: Vec<&TrendRow> = rows.iter().filter(|r| matches!(r.shape, Shape::U | Shape::InvertedU)).collect();
    let _ = writeln!(s, "## U-shaped / inverted-U: {} of {} flagged (q < {ALPHA})\n", shaped.len(), rows.len());
    if !shaped.is_empty() {
        let _ = writeln!(s, "| Task | Model | Shape | Curvature | t | p | q | Extremum at |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
        for r in &shaped {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | t({})={} | {} | {} | {} tokens |",
                task_display_name(&r.task),
                label(r),
                r.shape.as_str(),
                num(r.curvature, 4),
                r.curvature_df,
                num(r.curvature_t, 2),
                pval(r.curvature_p),
                pval(r.curvature_q),
                tokens_label(r.vertex_tokens)
            );
        }
        s.push('\n');
    }
    let _ = writeln!(s, "## All tasks and models\n");
    let _ = writeln!(
        s,
        "| Task | Model | Checkpoints | Last | Test | Effect | Drop p | Drop q | Inverse scaling | Curvature p | Curvature q | Shape |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.4} | {} | {} | {} | {} | {} | {} | {} | {} |",
            task_display_name(&r.task),
            label(r),
            r.checkpoints,
            r.last_acc,
            r.test.as_str(),
            num(r.drop_effect, 4),
            pval(r.drop_p),
            pval(r.drop_q),
            if r.inverse_scaling { "yes" } else { "no" },
            pval(r.curvature_p),
            pval(r.curvature_q),
            r.shape.as_str()
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(task: &str, accs: &[(u64, f64)]) -> Vec<ResultRow> {
        accs.iter()
            .map(|&(step, acc)| ResultRow {
                model: "EleutherAI/pythia-1b".into(),
                revision: format!("step{step}"),
                task: task.into(),
                accuracy: acc,
                accuracy_se: (acc * (1.0 - acc) / 999.0).sqrt(),
            })
            .collect()
    }

    #[test]
    fn unpaired_drop_and_inverted_u() {
        // 1000 items; rises then falls by 0.22: a decline and an inverted U, both far beyond chance.
        let r = trend_flags(&rows(
            "t",
            &[
                (1000, 0.5),
                (2000, 0.6),
                (4000, 0.7),
                (8000, 0.72),
                (16000, 0.7),
                (32000, 0.6),
                (64000, 0.5),
            ],
        ));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].test, TestKind::UnpairedProportions);
        assert!(r[0].inverse_scaling, "{r:?}");
        assert_eq!(r[0].drop_step, Some(8000));
        assert_eq!(r[0].comparisons, 6);
        assert!((r[0].drop_p - (6.0 * r[0].drop_p_min).min(1.0)).abs() < 1e-15);
        assert_eq!(r[0].shape, Shape::InvertedU);
        let v = r[0].vertex_tokens;
        assert!(v > 4000.0 * 2_097_152.0 && v < 16000.0 * 2_097_152.0, "{v}");
    }

    #[test]
    fn monotone_rise_and_zero_standard_errors() {
        let r = trend_flags(&rows("t", &[(1000, 0.5), (2000, 0.56), (4000, 0.59), (8000, 0.66), (16000, 0.69)]));
        assert!(!r[0].inverse_scaling);
        assert_eq!(r[0].shape, Shape::None);
        // Accuracy 1 then 0 (both standard errors 0): the item count comes from nowhere, so the means test
        // has no standard error and declines to test instead of dividing by zero.
        let r = trend_flags(&rows("t", &[(1000, 1.0), (2000, 0.0)]));
        assert_eq!(r[0].test, TestKind::None);
        assert!(r[0].drop_p.is_nan() && !r[0].inverse_scaling);
        assert_eq!(r[0].shape, Shape::NotTested);
        // With another checkpoint giving the item count, the pooled test is sane.
        let r = trend_flags(&rows("t", &[(1000, 0.999), (2000, 1.0), (4000, 0.0)]));
        assert_eq!(r[0].test, TestKind::UnpairedProportions);
        assert!(r[0].drop_stat.is_finite() && r[0].drop_stat < 50.0, "{r:?}");
        assert!(r[0].inverse_scaling);
    }

    #[test]
    fn paired_tests_from_items() {
        // 200 items, all right at step 1000 and 2000, 20 of them wrong at the last: McNemar b = 20, c = 0.
        let rs = rows("t", &[(1000, 1.0), (2000, 1.0), (4000, 0.9)]);
        let mut items = ItemData::default();
        items.insert("EleutherAI/pythia-1b", "step1000", "t", vec![1.0; 200]);
        items.insert("EleutherAI/pythia-1b", "step2000", "t", vec![1.0; 200]);
        let mut last = vec![1.0; 200];
        last[..20].fill(0.0);
        items.insert("EleutherAI/pythia-1b", "step4000", "t", last);
        let r = trend_flags_with(&rs, Some(&items));
        assert_eq!(r[0].test, TestKind::McNemar);
        assert_eq!(r[0].items, Some(200));
        assert_eq!(r[0].drop_stat, 20.0);
        assert!((r[0].drop_effect - 0.1).abs() < 1e-12);
        assert!((r[0].drop_p_min - 0.5f64.powi(20)).abs() < 1e-18);
        assert_eq!(statistic(&r[0]), "b=20, c=0");
        assert!(r[0].inverse_scaling);
        // A checkpoint without items: the whole row falls back to the unpaired approximation.
        let mut partial = ItemData::default();
        partial.insert("EleutherAI/pythia-1b", "step4000", "t", vec![1.0; 200]);
        assert_eq!(trend_flags_with(&rs, Some(&partial))[0].test, TestKind::UnpairedProportions);
    }
}
