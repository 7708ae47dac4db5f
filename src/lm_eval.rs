//! lm-evaluation-harness 0.4 compatibility: lm-eval's task names, its results JSON layout and its samples
//! JSONL rows, so that scripts written against lm-eval's files read lmscore's unchanged.
//!
//! What lm-eval 0.4.13 writes, and what is built here (`lm_eval/evaluator.py`, `evaluator_utils.py`,
//! `loggers/evaluation_tracker.py`):
//!
//! ```text
//! {"results": {task: {"name", "alias", "sample_len", "acc,none", "acc_stderr,none", ...}},
//!  "group_subtasks": {}, "configs": {task: {...}}, "versions": {task: v}, "n-shot": {task: 0},
//!  "higher_is_better": {task: {"acc": true, ...}}, "n-samples": {task: {"original", "effective"}},
//!  "config": {"model", "model_args", "batch_size", "device", "limit", ...},
//!  "git_hash", "date", "total_evaluation_time_seconds"}
//! ```
//!
//! A standard error over one document is the string `"N/A"`, as lm-eval writes it. Metric names are
//! lm-eval's: TruthfulQA MC1 and MC2 are both `acc` (lm-eval's `truthfulqa_mc1` / `truthfulqa_mc2` tasks).

use crate::tasks::Protocol;
use serde_json::{json, Map, Value};

/// lm-eval 0.4's names of the tasks lmscore runs, and lmscore's own name for each. TruthfulQA has the
/// same name in both.
pub const TASK_ALIASES: [(&str, &str); 10] = [
    ("inverse_scaling_hindsight_neglect", "hindsight_neglect"),
    ("inverse_scaling_into_the_unknown", "into_the_unknown"),
    ("inverse_scaling_memo_trap", "memo_trap"),
    ("inverse_scaling_modus_tollens", "modus_tollens"),
    ("inverse_scaling_neqa", "neqa"),
    ("inverse_scaling_pattern_matching_suppression", "pattern_matching_suppression"),
    ("inverse_scaling_repetitive_algebra", "repetitive_algebra"),
    ("inverse_scaling_sig_figs", "sig_figs"),
    ("inverse_scaling_redefine_math", "redefine_math"),
    ("inverse_scaling_quote_repetition", "quote_repetition"),
];

/// lmscore's name for an lm-eval task name (None: not an lm-eval alias).
pub fn canonical_task(name: &str) -> Option<&'static str> {
    TASK_ALIASES.iter().find(|(a, _)| *a == name).map(|(_, t)| *t)
}

/// lm-eval's name for one of lmscore's tasks (TruthfulQA and custom tasks keep theirs).
pub fn lm_eval_task_name(task: &str) -> String {
    TASK_ALIASES
        .iter()
        .find(|(_, t)| *t == task)
        .map(|(a, _)| a.to_string())
        .unwrap_or_else(|| task.to_string())
}

/// The `metric,filter` key lm-eval uses (lmscore applies no filters: lm-eval's `none`).
pub fn metric_key(metric: &str) -> String {
    format!("{metric},none")
}

pub fn stderr_key(metric: &str) -> String {
    format!("{metric}_stderr,none")
}

/// A standard error as lm-eval writes it: a number, or `"N/A"` where it is undefined (one document).
pub fn stderr_value(stderr: f64) -> Value {
    if stderr.is_finite() {
        json!(stderr)
    } else {
        json!("N/A")
    }
}

/// What lm-eval's task definition says about a task, for `versions`, `higher_is_better` and `configs`.
#[derive(Clone, Debug)]
pub struct TaskMeta {
    /// `metadata.version` of the task YAML (lm-eval-0.4) or the protocol's name (paper-2023: not an
    /// lm-eval 0.4 task definition).
    pub version: Value,
    /// Metrics in lm-eval's order, all higher-is-better.
    pub metrics: Vec<&'static str>,
    pub config: Value,
}

/// lm-eval's definition of task `task` (lmscore's name) as lmscore ran it under `protocol`, reading
/// `data_file`. The `configs` entry carries the fields of lm-eval 0.4's task YAML that decide the
/// requests (prompt, choices, delimiters, metrics); `dataset_path` is the file lmscore read.
pub fn task_meta(task: &str, protocol: Protocol, data_file: &str) -> TaskMeta {
    let name = lm_eval_task_name(task);
    let lm_eval = protocol == Protocol::LmEval04;
    let (version, metrics, split, text, target, choice, delimiter, tag): (Value, Vec<&str>, &str, &str, Value, &str, &str, &str) = match task {
        "truthfulqa_mc1" | "truthfulqa_mc2" => (
            json!(if task == "truthfulqa_mc1" { 2.0 } else { 3.0 }),
            vec!["acc"],
            "validation_split",
            "QA_PROMPT + '\\n\\nQ: ' + question + '\\nA:'",
            json!(0),
            if task == "truthfulqa_mc1" {
                "{{mc1_targets.choices}}"
            } else {
                "{{mc2_targets.choices}}"
            },
            " ",
            "truthfulqa",
        ),
        _ if task.starts_with(crate::tasks::CUSTOM_PREFIX) => (
            json!(0),
            vec!["acc", "acc_norm"],
            "test_split",
            "context",
            json!("gold"),
            "choices",
            "delimiter (default \" \")",
            "custom",
        ),
        _ => (
            json!(0),
            vec!["acc", "acc_norm"],
            "test_split",
            "prompt",
            json!("answer_index"),
            "classes",
            protocol.prize_delimiter(),
            "inverse_scaling_mc",
        ),
    };
    let metric_list: Vec<Value> = metrics
        .iter()
        .map(|m| json!({"metric": m, "aggregation": "mean", "higher_is_better": true}))
        .collect();
    let mut config = json!({
        "task": name,
        "tag": [tag],
        "dataset_path": data_file,
        split: "train",
        "doc_to_text": text,
        "doc_to_target": target,
        "doc_to_choice": choice,
        "description": "",
        "target_delimiter": delimiter,
        "fewshot_delimiter": "\n\n",
        "num_fewshot": 0,
        "metric_list": metric_list,
        "output_type": "multiple_choice",
        "repeats": 1,
        "should_decontaminate": false,
        "metadata": {"version": version.clone(), "protocol": protocol.name()},
    });
    if task.starts_with("truthfulqa") {
        config[split] = json!("validation");
    }
    TaskMeta {
        version: if lm_eval { version } else { json!(protocol.name()) },
        metrics,
        config,
    }
}

/// One task's aggregated results, ready for the layout.
#[derive(Clone, Debug)]
pub struct TaskResults {
    /// The key in `results` (the task name the user gave: lmscore's or lm-eval's).
    pub key: String,
    /// (metric, value, standard error; NaN where undefined).
    pub metrics: Vec<(String, f64, f64)>,
    /// Documents in the task's data, and documents scored (after `--limit`).
    pub original: usize,
    pub effective: usize,
    pub meta: TaskMeta,
}

/// lm-eval 0.4's results document: `results`, `group_subtasks`, `configs`, `versions`, `n-shot`,
/// `higher_is_better`, `n-samples`, then `config` and whatever `extra` holds (lmscore's own sections,
/// `date`, ...), in that order. A value that is not finite is an error naming the task and metric:
/// lm-eval's readers would choke on it and JSON has no NaN.
pub fn results_document(tasks: &[TaskResults], config: Value, extra: Map<String, Value>) -> crate::Result<Value> {
    let (mut results, mut configs, mut versions, mut n_shot, mut hib, mut n_samples) =
        (Map::new(), Map::new(), Map::new(), Map::new(), Map::new(), Map::new());
    for t in tasks {
        let mut r = Map::new();
        r.insert("name".into(), json!(t.key));
        r.insert("alias".into(), json!(t.key));
        r.insert("sample_len".into(), json!(t.effective));
        for (m, value, stderr) in &t.metrics {
            if !value.is_finite() {
                return Err(crate::Error::invalid(format!(
                    "task {}: metric {m} is {value}, which is not a number to report",
                    t.key
                )));
            }
            r.insert(metric_key(m), json!(value));
            r.insert(stderr_key(m), stderr_value(*stderr));
        }
        results.insert(t.key.clone(), Value::Object(r));
        let mut cfg = t.meta.config.clone();
        cfg["task"] = json!(t.key);
        configs.insert(t.key.clone(), cfg);
        versions.insert(t.key.clone(), t.meta.version.clone());
        n_shot.insert(t.key.clone(), json!(0));
        hib.insert(
            t.key.clone(),
            t.meta.metrics.iter().map(|m| (m.to_string(), json!(true))).collect::<Map<_, _>>().into(),
        );
        n_samples.insert(t.key.clone(), json!({"original": t.original, "effective": t.effective}));
    }
    // lm-eval sorts these four by task name.
    let sorted = |m: Map<String, Value>| -> Value {
        let mut v: Vec<(String, Value)> = m.into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        Value::Object(v.into_iter().collect())
    };
    let mut doc = Map::new();
    doc.insert("results".into(), Value::Object(results));
    doc.insert("group_subtasks".into(), json!({}));
    doc.insert("configs".into(), sorted(configs));
    doc.insert("versions".into(), sorted(versions));
    doc.insert("n-shot".into(), sorted(n_shot));
    doc.insert("higher_is_better".into(), sorted(hib));
    doc.insert("n-samples".into(), Value::Object(n_samples));
    doc.insert("config".into(), config);
    doc.extend(extra);
    Ok(Value::Object(doc))
}

/// `git describe --always` in the working directory, as lm-eval's `get_git_commit_hash` records it
/// (None outside a git checkout or without git).
pub fn git_hash() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["describe", "--always"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

/// Seconds since the Unix epoch (lm-eval's `date` is `time.time()` at the start of the run).
pub fn unix_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// lm-eval's `date_id` (`datetime.now().isoformat().replace(":", "-")`, e.g. `2024-05-01T12-30-05.123456`),
/// which names its results and samples files and by which its readers pick the latest. lmscore writes UTC
/// (no time-zone database needed); lm-eval writes local time in the same format.
pub fn date_id(unix: f64) -> String {
    let total = (unix * 1e6).round() as i64;
    let (secs, micros) = (total.div_euclid(1_000_000), total.rem_euclid(1_000_000));
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}-{:02}-{:02}.{micros:06}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Python's `str(float)` (`repr`): the shortest round-trip digits, in exponent form when the exponent is
/// below -4 or at least 16 (`1e-05`, `1.5e+16`), else positional with at least one decimal (`-3.0`).
/// lm-eval's samples files hold log-likelihoods as these strings.
pub fn py_float_str(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    // `{:e}` gives the shortest round-trip digits as d.ddde[-]N.
    let e = format!("{x:e}");
    let (mantissa, exp) = e.split_once('e').expect("`{:e}` has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    if !(-4..16).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    let s = format!("{x:?}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

/// Python's `json.dumps(v, indent=2, ensure_ascii=False)`, which lm-eval hashes into `doc_hash`.
/// serde_json's pretty printer writes the same text (two-space indent, `": "`, the same escapes) except
/// for empty containers, written `[]`/`{}` by both.
pub fn py_json_dumps_indent2(v: &Value) -> String {
    serde_json::to_string_pretty(v).expect("a JSON value serialises")
}

/// lm-eval's `hash_string`: sha256 of the UTF-8 text, lowercase hex.
pub fn hash_string(s: &str) -> String {
    crate::tasks::hub::sha256_hex(s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_strings() {
        for (x, s) in [
            (-0.259919889792832, "-0.259919889792832"),
            (-3.0, "-3.0"),
            (1e-5, "1e-05"),
            (-1.25e-7, "-1.25e-07"),
            (0.0001, "0.0001"),
            (-123456.5, "-123456.5"),
            (1e16, "1e+16"),
            (1.5e300, "1.5e+300"),
        ] {
            assert_eq!(py_float_str(x), s);
        }
    }

    #[test]
    fn date_ids() {
        assert_eq!(date_id(0.0), "1970-01-01T00-00-00.000000");
        assert_eq!(date_id(1_796_180_595.28238), "2026-12-02T03-03-15.282380");
        assert_eq!(date_id(951_782_400.5), "2000-02-29T00-00-00.500000");
    }

    #[test]
    fn aliases_round_trip() {
        for (a, t) in TASK_ALIASES {
            assert_eq!(canonical_task(a), Some(t));
            assert_eq!(lm_eval_task_name(t), a);
        }
        assert_eq!(canonical_task("memo_trap"), None);
        assert_eq!(lm_eval_task_name("truthfulqa_mc2"), "truthfulqa_mc2");
    }
}
