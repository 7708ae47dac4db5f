//! The trend flags on simulated sweeps: with no trend the false-discovery rate stays at (below) its nominal
//! 5%, for the paired tests (McNemar on 0/1 items, paired t on MC2-like items) and for the unpaired
//! approximation; a planted decline at the last checkpoint is found. Seeded, a few seconds in all.
//! Also: the chance levels the figure uses without per-item data are those of the task data.

use lmscore::report::{trend_flags_with, ItemData, ResultRow, Shape, TestKind, TrendRow, ALPHA};
use std::path::PathBuf;

/// SplitMix64: small, seeded, good enough for simulations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

const STEPS: [u64; 8] = [2000, 4000, 8000, 16000, 32000, 64000, 128000, 143000];
const MODELS: [&str; 8] = ["70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b"];

/// One simulated report: `tasks` x 8 models x 8 checkpoints over `items` items. Each item has its own
/// ability (so checkpoints are correlated through the items, as real ones are); with no trend every
/// checkpoint draws from the same per-item distribution. `drop(task, model)` lowers the last checkpoint's
/// per-item mean by that much (0: no trend). `mc2`: continuous per-item values (mean + noise, in [0, 1])
/// instead of 0/1.
fn simulate(rng: &mut Rng, tasks: usize, items: usize, mc2: bool, drop: impl Fn(usize, usize) -> f64) -> (Vec<ResultRow>, ItemData) {
    let mut rows = Vec::new();
    let mut data = ItemData::default();
    for t in 0..tasks {
        let task = if mc2 { format!("sim{t}_mc2") } else { format!("sim{t}") };
        for (m, size) in MODELS.iter().enumerate() {
            let model = format!("EleutherAI/pythia-{size}");
            let ability: Vec<f64> = (0..items).map(|_| 0.15 + 0.7 * rng.uniform()).collect();
            for (k, step) in STEPS.iter().enumerate() {
                let shift = if k == STEPS.len() - 1 { drop(t, m) } else { 0.0 };
                let values: Vec<f64> = ability
                    .iter()
                    .map(|&a| {
                        let mean = (a - shift).clamp(0.0, 1.0);
                        if mc2 {
                            (mean + 0.15 * rng.normal()).clamp(0.0, 1.0)
                        } else if rng.uniform() < mean {
                            1.0
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let n = values.len() as f64;
                let mean = values.iter().sum::<f64>() / n;
                let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0);
                rows.push(ResultRow {
                    model: model.clone(),
                    revision: format!("step{step}"),
                    task: task.clone(),
                    accuracy: mean,
                    accuracy_se: (var / n).sqrt(),
                });
                data.insert(&model, &format!("step{step}"), &task, values);
            }
        }
    }
    (rows, data)
}

/// False discoveries over discoveries (0 when nothing is flagged), and true discoveries, of one report.
fn score(flags: &[TrendRow], planted: impl Fn(&TrendRow) -> bool, count_shapes: bool) -> (f64, usize, usize) {
    let mut found = 0;
    let mut false_ = 0;
    let mut true_ = 0;
    for r in flags {
        let flagged = r.inverse_scaling || (count_shapes && matches!(r.shape, Shape::U | Shape::InvertedU));
        if flagged {
            found += 1;
            if planted(r) && r.inverse_scaling {
                true_ += 1;
            } else {
                false_ += 1;
            }
        }
    }
    (if found == 0 { 0.0 } else { false_ as f64 / found as f64 }, true_, false_)
}

/// Mean false-discovery proportion over `reps` simulated reports, with its Monte Carlo standard error.
fn fdr(seed: u64, reps: usize, mc2: bool, paired: bool, drop: impl Fn(usize, usize) -> f64 + Copy, count_shapes: bool) -> (f64, f64, f64, TestKind) {
    let mut rng = Rng(seed);
    let (mut props, mut true_found, mut planted_total) = (Vec::new(), 0usize, 0usize);
    let mut kind = TestKind::None;
    for _ in 0..reps {
        let (rows, data) = simulate(&mut rng, 3, 300, mc2, drop);
        let flags = trend_flags_with(&rows, paired.then_some(&data));
        kind = flags[0].test;
        let is_planted = |r: &TrendRow| {
            let t: usize = r.task.trim_start_matches("sim").split('_').next().unwrap().parse().unwrap();
            let m = MODELS.iter().position(|s| r.model.ends_with(&format!("-{s}"))).unwrap();
            drop(t, m) > 0.0
        };
        let (p, t, _) = score(&flags, is_planted, count_shapes);
        props.push(p);
        true_found += t;
        planted_total += flags.iter().filter(|r| is_planted(r)).count();
    }
    let mean = props.iter().sum::<f64>() / reps as f64;
    let se = (props.iter().map(|p| (p - mean).powi(2)).sum::<f64>() / (reps - 1) as f64 / reps as f64).sqrt();
    let power = if planted_total == 0 {
        f64::NAN
    } else {
        true_found as f64 / planted_total as f64
    };
    (mean, se, power, kind)
}

const REPS: usize = 300;

#[test]
fn no_trend_keeps_the_false_discovery_rate_at_nominal() {
    // Every pair is null: any flag (inverse scaling or a shape) is a false discovery, so this is the
    // family-wise error rate, which BH holds at ALPHA under the complete null.
    for (name, mc2, paired, seed) in [
        ("paired McNemar", false, true, 1),
        ("paired t (MC2)", true, true, 2),
        ("unpaired, proportions", false, false, 3),
        ("unpaired, means (MC2)", true, false, 4),
    ] {
        let (rate, se, _, kind) = fdr(seed, REPS, mc2, paired, |_, _| 0.0, true);
        eprintln!(
            "no trend, {name} ({}): FDR {rate:.4} +- {se:.4} over {REPS} reports of 24 pairs",
            kind.as_str()
        );
        assert_eq!(kind.paired(), paired, "{name}");
        assert!(rate <= ALPHA + 2.0 * se.max(0.005), "{name}: FDR {rate} (se {se}) above {ALPHA}");
    }
}

#[test]
fn a_planted_decline_is_found_and_the_rest_stay_quiet() {
    // 4 of 24 pairs lose 0.15 at the last checkpoint (45 of 300 items), the rest have no trend.
    let planted = |t: usize, m: usize| if t == 0 && m % 2 == 0 { 0.15 } else { 0.0 };
    for (name, mc2, seed) in [("paired McNemar", false, 11), ("paired t (MC2)", true, 12)] {
        let (rate, se, power, _) = fdr(seed, 100, mc2, true, planted, false);
        eprintln!("planted decline, {name}: FDR {rate:.4} +- {se:.4}, power {power:.3}");
        assert!(rate <= ALPHA + 2.0 * se.max(0.005), "{name}: FDR {rate} (se {se})");
        assert!(power >= 0.9, "{name}: found {power} of the planted declines");
    }
    // And the effect is reported in the metric's units, against the earlier checkpoint that shows it.
    let mut rng = Rng(21);
    let (rows, data) = simulate(&mut rng, 1, 300, false, |_, m| if m == 0 { 0.2 } else { 0.0 });
    let flags = trend_flags_with(&rows, Some(&data));
    let r = &flags[0];
    assert!(r.inverse_scaling && r.test == TestKind::McNemar && r.items == Some(300), "{r:?}");
    assert!((r.drop_effect - 0.2).abs() < 0.08, "{r:?}");
    assert!(r.drop_q < 1e-6 && r.drop_p <= 7.0 * r.drop_p_min + 1e-300, "{r:?}");
}

/// The chance levels built in for a TSV are those of the data: TruthfulQA's computed per question from
/// shared/data, through the same per-document chance values a sweep stores.
#[test]
fn built_in_chance_levels_match_the_task_data() {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    let tok = lmscore::tokenizer::Tokenizer::from_file(&data.join("tokenizer/tokenizer.json")).unwrap();
    let opts = lmscore::tasks::LoadOptions {
        data_dir: data.clone(),
        skip_bad_rows: false,
        offline: true,
    };
    for (task, id) in [
        ("truthfulqa_mc1", "truthfulqa_mc1"),
        ("truthfulqa_mc2", "truthfulqa_mc2"),
        ("memo_trap", "isp_memo_trap"),
        ("neqa", "isp_neqa"),
    ] {
        let t = lmscore::tasks::load_task(task, lmscore::tasks::Protocol::Paper2023, &tok, &opts).unwrap();
        let requests = t
            .docs
            .iter()
            .enumerate()
            .flat_map(|(d, doc)| {
                (0..doc.requests.len()).map(move |c| lmscore::tasks::RequestLog {
                    doc: d,
                    choice: c,
                    logprob: -1.0 - c as f64,
                    is_greedy: c == 0,
                    n_tokens: 1,
                })
            })
            .collect();
        let outcome = lmscore::tasks::TaskOutcome {
            task: task.into(),
            n_docs: t.docs.len(),
            skipped_rows: 0,
            metrics: vec![],
            requests,
            stats: Default::default(),
            shared_plan_with: vec![],
        };
        let rows = lmscore::sweep::doc_rows(&t, &outcome).unwrap();
        let first = &rows[0].metric;
        let chance: Vec<f64> = rows.iter().filter(|r| &r.metric == first).map(|r| r.chance).collect();
        let mean = chance.iter().sum::<f64>() / chance.len() as f64;
        let built_in = lmscore::report::chance_level(id).unwrap();
        assert!((mean - built_in).abs() < 1e-12, "{task}: data {mean}, built in {built_in}");
    }
}
