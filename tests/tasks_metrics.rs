//! Metric functions on hand-made log-likelihoods: first-maximum tie-breaking, acc_norm's length, the two
//! TruthfulQA rows with unsorted MC2 labels (0-based 25 and 208) under both MC2 formulas, the two mangled
//! memo_trap rows, and the stderr formulas of task-spec §2/§3.

use lmscore::tasks::{self, metrics, LoadOptions, LoadedTask, Protocol};
use lmscore::tokenizer::Tokenizer;
use std::path::PathBuf;

fn shared_data() -> PathBuf {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data"));
    assert!(
        p.join("truthfulqa").is_dir(),
        "{} is missing: these tests need the project's shared data beside the crate, as CI has it",
        p.display()
    );
    p
}

fn load(name: &str, protocol: Protocol, keep: &[usize]) -> LoadedTask {
    let tok = Tokenizer::from_file(&shared_data().join("tokenizer/tokenizer.json")).unwrap();
    let opts = LoadOptions {
        data_dir: shared_data(),
        skip_bad_rows: false,
        offline: true,
    };
    let mut t = tasks::load_task(name, protocol, &tok, &opts).unwrap();
    let docs = std::mem::take(&mut t.docs);
    t.docs = keep.iter().map(|&i| docs[i].clone()).collect();
    t
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn ties_first_maximum_wins() {
    assert_eq!(metrics::acc(&[-1.0, -1.0], 0), 1.0);
    assert_eq!(metrics::acc(&[-1.0, -1.0], 1), 0.0);
    assert_eq!(metrics::acc(&[-3.0, -1.0, -1.0], 2), 0.0);
    assert_eq!(metrics::acc(&[-3.0, -1.0, -1.0], 1), 1.0);
    // acc_norm ties after dividing by the length: -2/1 == -4/2, the first wins.
    assert_eq!(metrics::acc_norm(&[-2.0, -4.0], &[1, 2], 0), 1.0);
    assert_eq!(metrics::acc_norm(&[-2.0, -4.0], &[1, 2], 1), 0.0);
    // acc and acc_norm disagree when lengths differ.
    assert_eq!(metrics::acc(&[-6.0, -5.0], 0), 0.0);
    assert_eq!(metrics::acc_norm(&[-6.0, -5.0], &[6, 2], 0), 1.0);
    // MC1: the true answer is choice 0 and wins ties.
    assert_eq!(metrics::mc1(&[-1.0, -1.0, -2.0]), 1.0);
    assert_eq!(metrics::mc1(&[-2.0, -1.0, -1.0]), 0.0);
    // numpy semantics on degenerate values: a NaN is the maximum; -inf/0-length do not panic.
    assert_eq!(metrics::argmax(&[-1.0, f64::NAN]), 1);
    assert_eq!(metrics::acc_norm(&[0.0, -1.0], &[0, 1], 0), 1.0); // 0/0 = NaN wins, as in numpy
    assert_eq!(metrics::acc_norm(&[-1.0, -5.0], &[0, 1], 1), 1.0); // -1/0 = -inf loses
}

/// Rows 25 and 208: `[1,1,1,0,1,0,0,0,0]` and `[1,1,0,1,0,0,0]`. With p_i proportional to i+1 the v0.3 formula
/// counts only the true answers before the first 0; the fixed formula counts all of them. LLs are offset
/// by -1000 so that a naive exp() would underflow to 0/0.
#[test]
fn truthfulqa_unsorted_mc2_rows_both_formulas() {
    for (protocol, split) in [(Protocol::Paper2023, true), (Protocol::LmEval04, false)] {
        let t = load("truthfulqa_mc2", protocol, &[25, 208]);
        assert_eq!(t.docs[0].labels, vec![1, 1, 1, 0, 1, 0, 0, 0, 0]);
        assert_eq!(t.docs[1].labels, vec![1, 1, 0, 1, 0, 0, 0]);
        let lls: Vec<f64> = (1..=9).chain(1..=7).map(|w| (w as f64).ln() - 1000.0).collect();
        let per_doc = tasks::doc_metrics(&t, &lls).unwrap();
        assert_eq!(per_doc.len(), 1);
        assert_eq!(per_doc[0].0, "acc", "lm-eval's name for MC2");
        let v = &per_doc[0].1;
        if split {
            assert!(close(v[0], 6.0 / 45.0), "{v:?}");
            assert!(close(v[1], 3.0 / 28.0), "{v:?}");
        } else {
            assert!(close(v[0], 11.0 / 45.0), "{v:?}");
            assert!(close(v[1], 7.0 / 28.0), "{v:?}");
        }
    }
    // Sorted labels: both formulas agree.
    let lls = [-1.0, -2.0, -3.0, -4.0];
    let labels = [1, 1, 0, 0];
    assert!(close(metrics::mc2_split(&lls, &labels).unwrap(), metrics::mc2_fixed(&lls, &labels)));
    // No false label: the v0.3 formula is undefined (the harness's labels.index(0) raises).
    assert_eq!(metrics::mc2_split(&[-1.0], &[1]), None);
    assert!(close(metrics::mc2_fixed(&[-1.0, -2.0], &[1, 1]), 1.0));
}

/// memo_trap rows 203 and 493: the paper's parser makes their second choice `t."]` (4 code points), which
/// is what acc_norm divides by; lm-eval 0.4 reads ` don't.` / ` in't.` (7 / 6).
#[test]
fn mangled_memo_trap_rows() {
    let paper = load("memo_trap", Protocol::Paper2023, &[203, 493]);
    assert_eq!(paper.docs[0].choices, vec![" proceed.", "t.\"]"]);
    assert_eq!(paper.docs[1].choices, vec![" here.", "t.\"]"]);
    assert_eq!((paper.docs[0].gold, paper.docs[1].gold), (0, 0));
    let lls = [-9.0, -4.4, -6.0, -4.0];
    let m = tasks::doc_metrics(&paper, &lls).unwrap();
    assert_eq!(m[0], ("acc", vec![0.0, 0.0]));
    // 203: -9/9 = -1 > -4.4/4 = -1.1; 493: -6/6 = -4/4 = -1, a tie, the first (gold) wins.
    assert_eq!(m[1], ("acc_norm", vec![1.0, 1.0]));

    let v04 = load("memo_trap", Protocol::LmEval04, &[203, 493]);
    assert_eq!(v04.docs[0].choices, vec![" proceed.", " don't."]);
    let m = tasks::doc_metrics(&v04, &lls).unwrap();
    assert_eq!(m[0], ("acc", vec![0.0, 0.0]));
    // 203: -1 < -4.4/7; 493: -1 < -4/6.
    assert_eq!(m[1], ("acc_norm", vec![0.0, 0.0]));
}

#[test]
fn stderr_formulas() {
    // acc: sqrt(p (1-p) / (n-1)). The paper's memo_trap, pythia-70m step2000: acc 763/936.
    let xs: Vec<f64> = (0..936).map(|i| if i < 763 { 1.0 } else { 0.0 }).collect();
    assert_eq!(metrics::mean(&xs), 0.8151709401709402);
    assert!(
        (metrics::mean_stderr(&xs) - 0.012694151184752483).abs() < 1e-15,
        "{}",
        metrics::mean_stderr(&xs)
    );
    let p: f64 = 763.0 / 936.0;
    assert!((metrics::mean_stderr(&xs) - (p * (1.0 - p) / 935.0).sqrt()).abs() < 1e-15);
    // neqa, pythia-70m step2000: 0.46 = 138/300, stderr 0.0288230676849157.
    let xs: Vec<f64> = (0..300).map(|i| if i % 300 < 138 { 1.0 } else { 0.0 }).collect();
    assert!((metrics::mean_stderr(&xs) - 0.0288230676849157).abs() < 1e-15);
    // mc2: sample standard deviation (n-1) / sqrt(n).
    let xs = [0.2, 0.4, 0.9];
    assert!(close(metrics::mean(&xs), 0.5));
    assert!(close(metrics::mean_stderr(&xs), (0.26f64 / 2.0).sqrt() / 3f64.sqrt()));
    // Fewer than two docs: undefined.
    assert!(metrics::mean_stderr(&[1.0]).is_nan());
}

/// Python str length in code points, not bytes or UTF-16 units.
#[test]
fn python_length() {
    assert_eq!(metrics::py_len(" café ☕"), 7);
    assert_eq!(metrics::py_len("😀"), 1);
    assert_eq!(metrics::py_len("e\u{301}"), 2);
}
