//! The paper's statistical table: per task, t and BH-adjusted p of log10(params), log10(tokens) and
//! their interaction, printed cell for cell as the paper's `statistical_tests.tsv`.

use super::ResultRow;
use crate::stats::{interaction_model, p_adjust_bh, InteractionFit};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The paper's name for a task (as in its tables and figures); unknown tasks keep their id.
pub fn task_display_name(task: &str) -> String {
    let name = match task {
        "isp_hindsight_neglect" => "Hindsight Neglect",
        "isp_into_the_unknown" => "Into the Unknown",
        "isp_memo_trap" => "Memo Trap",
        "isp_modus_tollens" => "Modus Tollens",
        "isp_neqa" => "NeQA",
        "isp_pattern_matching_suppression" => "Pattern Match Suppression",
        "isp_redefine" => "Redefine",
        "isp_repetitive_algebra" => "Repetitive Algebra",
        "isp_resisting_correction" => "Resisting Correction",
        "isp_sig_figs" => "Sig Figs",
        "truthfulqa_mc1" => "TruthfulQA-MC1",
        "truthfulqa_mc2" => "TruthfulQA-MC2",
        other => other,
    };
    name.to_string()
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct TaskTests {
    /// Task id.
    pub task: String,
    /// The paper's name for it.
    pub display: String,
    /// Runs (model, checkpoint) that entered the fit.
    pub runs: usize,
    /// The fitted model; `None` when it could not be fitted (see `error`).
    pub fit: Option<InteractionFit>,
    /// Benjamini-Hochberg adjusted p of (params, tokens, interaction), adjusted over every p-value of
    /// every task in the table; NaN without a fit.
    pub p_adjusted: [f64; 3],
    /// Why there is no fit.
    pub error: Option<String>,
}

/// Fit the paper's model for every task (sorted by task id) and BH-adjust all p-values together.
/// Runs at step 0 are left out (log10 of 0 tokens). A task that cannot be fitted (too few runs, a
/// single model size or checkpoint, constant accuracy) gets `fit: None` and NA cells, and its
/// p-values do not count in the adjustment, as R's `p.adjust` does with NA.
pub fn statistical_tests(rows: &[ResultRow]) -> Vec<TaskTests> {
    let mut by_task: BTreeMap<&str, (Vec<f64>, Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for r in rows {
        let (Ok(params), Ok(tokens)) = (r.params(), r.tokens()) else { continue };
        let e = by_task.entry(&r.task).or_default();
        if tokens > 0.0 {
            e.0.push(params);
            e.1.push(tokens);
            e.2.push(r.accuracy);
        }
    }
    let mut out: Vec<TaskTests> = by_task
        .into_iter()
        .map(|(task, (p, t, a))| {
            let (fit, error) = match interaction_model(&p, &t, &a) {
                Ok(f) => (Some(f), None),
                Err(e) => (None, Some(e.to_string())),
            };
            TaskTests {
                task: task.to_string(),
                display: task_display_name(task),
                runs: a.len(),
                fit,
                p_adjusted: [f64::NAN; 3],
                error,
            }
        })
        .collect();
    let raw: Vec<f64> = out
        .iter()
        .flat_map(|t| match &t.fit {
            Some(f) => [f.params.p, f.tokens.p, f.interaction.p],
            None => [f64::NAN; 3],
        })
        .collect();
    let adj = p_adjust_bh(&raw);
    for (i, t) in out.iter_mut().enumerate() {
        t.p_adjusted = [adj[3 * i], adj[3 * i + 1], adj[3 * i + 2]];
    }
    out
}

/// R's `round(x, digits)` as it then prints: trailing zeros dropped (`-1.5`, `-1`), no `-0`.
fn r_round(x: f64, digits: i32) -> String {
    let m = 10f64.powi(digits);
    let r = (x * m).round() / m;
    let r = if r == 0.0 { 0.0 } else { r };
    format!("{r}")
}

/// One cell: `t(60)=-4.22, p<0.001` or `t(60)=-1.5, p=0.208`: t to 2 decimals, adjusted p to 3,
/// `p<0.001` below that, as in the paper. `NA` without a fit.
fn cell(df: usize, t: f64, p: f64) -> String {
    if !t.is_finite() || p.is_nan() {
        return "NA".to_string();
    }
    let p = if p < 0.001 {
        "p<0.001".to_string()
    } else {
        format!("p={}", r_round(p, 3))
    };
    format!("t({df})={}, {p}", r_round(t, 2))
}

/// The table in the layout of the paper's `statistical_tests.tsv`:
/// `task_name`, `Parameters`, `Tokens`, `Interaction`, one row per task.
pub fn format_tests_table(tests: &[TaskTests]) -> String {
    let mut s = String::from("task_name\tParameters\tTokens\tInteraction\n");
    for t in tests {
        let cells: Vec<String> = match &t.fit {
            Some(f) => [f.params, f.tokens, f.interaction]
                .iter()
                .zip(t.p_adjusted)
                .map(|(c, p)| cell(f.df, c.t, p))
                .collect(),
            None => vec!["NA".to_string(); 3],
        };
        let _ = writeln!(s, "{}\t{}", t.display, cells.join("\t"));
    }
    s
}

/// Per checkpoint, where its time went (from a results store): download, load and scoring seconds summed over
/// its attempts, the tokens its plans computed and the rate that makes. Tab-separated, one row per run.
pub fn format_timings(timings: &[crate::store::CheckpointTiming]) -> String {
    let mut s =
        String::from("model\trevision\tdevice\tdtype\tattempts\ttasks\tweights_MiB\tdownload_s\tload_s\tscoring_s\tcomputed_tokens\ttokens_per_s\n");
    for t in timings {
        let x = &t.total;
        // A rate over no measurable time is not a rate.
        let rate = if x.scoring_seconds > 0.0 {
            format!("{:.0}", x.computed_tokens as f64 / x.scoring_seconds)
        } else {
            "NA".into()
        };
        let _ = writeln!(
            s,
            "{}\t{}\t{}\t{}\t{}\t{}\t{:.1}\t{:.2}\t{:.2}\t{:.2}\t{}\t{rate}",
            t.run.model,
            t.run.revision,
            t.run.device,
            t.run.dtype,
            t.attempts,
            x.tasks,
            x.weights_bytes as f64 / (1u64 << 20) as f64,
            x.download_seconds,
            x.load_seconds,
            x.scoring_seconds,
            x.computed_tokens
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_print_like_r() {
        assert_eq!(cell(60, -4.2213, 0.0004), "t(60)=-4.22, p<0.001");
        assert_eq!(cell(60, -1.4999, 0.2081), "t(60)=-1.5, p=0.208");
        assert_eq!(cell(60, -1.0012, 0.44251), "t(60)=-1, p=0.443");
        assert_eq!(cell(60, -2.97, 0.01004), "t(60)=-2.97, p=0.01");
        assert_eq!(cell(60, -0.001, 0.9999), "t(60)=0, p=1");
        assert_eq!(cell(60, 0.0, f64::NAN), "NA");
    }
}
