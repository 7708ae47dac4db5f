//! The SQLite results store: one transaction per (checkpoint, task), no duplicates, idempotent merges
//! that report conflicts instead of overwriting.

use lmscore::store::{MetricRow, RequestRow, RunKey, Store, TaskRecord};

fn key(model: &str, rev: &str) -> RunKey {
    RunKey {
        model: model.into(),
        revision: rev.into(),
        dtype: "f32".into(),
        protocol: "paper-2023".into(),
        device: "cpu".into(),
    }
}

fn record(task: &str, seed: f64, n_docs: u64) -> TaskRecord {
    let requests: Vec<RequestRow> = (0..n_docs)
        .flat_map(|d| {
            (0..2).map(move |c| RequestRow {
                doc: d,
                choice: c,
                logprob: -(d as f64) - c as f64 * seed,
                is_greedy: c == 0,
                n_tokens: 3 + c,
            })
        })
        .collect();
    TaskRecord {
        task: task.into(),
        n_docs,
        skipped_rows: 1,
        naive_tokens: 100,
        computed_tokens: 60,
        seconds: 0.5,
        metrics: vec![
            MetricRow {
                name: "acc".into(),
                value: seed / 10.0,
                stderr: Some(0.01),
            },
            MetricRow {
                name: "acc_norm".into(),
                value: seed / 20.0,
                stderr: None,
            },
        ],
        requests,
    }
}

fn count(path: &std::path::Path, table: &str) -> i64 {
    let c = rusqlite::Connection::open(path).unwrap();
    c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0)).unwrap()
}

#[test]
fn record_is_done_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let mut s = Store::open(&path).unwrap();
    let k = key("EleutherAI/pythia-70m", "step2000");
    assert!(!s.is_done(&k, "memo_trap").unwrap());
    let rec = record("memo_trap", 3.0, 5);
    assert!(s.record(&k, &rec).unwrap());
    assert!(s.is_done(&k, "memo_trap").unwrap());
    assert!(!s.is_done(&k, "neqa").unwrap());
    assert!(!s.is_done(&key("EleutherAI/pythia-70m", "step4000"), "memo_trap").unwrap());
    // Recording again writes nothing.
    assert!(!s.record(&k, &record("memo_trap", 9.0, 7)).unwrap());
    assert_eq!(s.task_record(&k, "memo_trap").unwrap().unwrap(), rec);
    drop(s);
    assert_eq!(count(&path, "requests"), 10);
    assert_eq!(count(&path, "task_results"), 2);
    assert_eq!(count(&path, "runs"), 1);
    // Reopening finds everything; the file is in WAL mode.
    let s = Store::open(&path).unwrap();
    assert!(s.is_done(&k, "memo_trap").unwrap());
    let c = rusqlite::Connection::open(&path).unwrap();
    let mode: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn a_failed_task_write_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let mut s = Store::open(&path).unwrap();
    let k = key("m-70m", "step1");
    let mut rec = record("neqa", 2.0, 4);
    // A duplicate (doc, choice) violates the primary key after some rows were inserted.
    let dup = rec.requests[0].clone();
    rec.requests.push(dup);
    let e = s.record(&k, &rec).unwrap_err().to_string();
    assert!(e.contains("r.db") && e.contains("neqa"), "{e}");
    assert!(!s.is_done(&k, "neqa").unwrap());
    drop(s);
    assert_eq!(count(&path, "requests"), 0);
    assert_eq!(count(&path, "task_results"), 0);
    assert_eq!(count(&path, "task_runs"), 0);
}

#[test]
fn all_task_results_for_reports() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path().join("r.db")).unwrap();
    s.record(&key("b-160m", "step2"), &record("neqa", 1.0, 2)).unwrap();
    s.record(&key("a-70m", "step1"), &record("neqa", 2.0, 3)).unwrap();
    s.record(&key("a-70m", "step1"), &record("memo_trap", 4.0, 3)).unwrap();
    s.finish_run(&key("a-70m", "step1")).unwrap();
    let rows = s.all_task_results().unwrap();
    let flat: Vec<(String, String, String, String, f64, u64)> = rows
        .iter()
        .map(|r| (r.model.clone(), r.revision.clone(), r.task.clone(), r.metric.clone(), r.value, r.n))
        .collect();
    assert_eq!(
        flat,
        [
            ("a-70m".into(), "step1".into(), "memo_trap".into(), "acc".into(), 0.4, 3),
            ("a-70m".into(), "step1".into(), "memo_trap".into(), "acc_norm".into(), 0.2, 3),
            ("a-70m".into(), "step1".into(), "neqa".into(), "acc".into(), 0.2, 3),
            ("a-70m".into(), "step1".into(), "neqa".into(), "acc_norm".into(), 0.1, 3),
            ("b-160m".into(), "step2".into(), "neqa".into(), "acc".into(), 0.1, 2),
            ("b-160m".into(), "step2".into(), "neqa".into(), "acc_norm".into(), 0.05, 2),
        ]
    );
    assert_eq!(rows[0].protocol, "paper-2023");
    assert_eq!(rows[0].stderr, Some(0.01));
    assert_eq!(rows[1].stderr, None);
    assert_eq!(s.completed().unwrap().len(), 3);
}

#[test]
fn report_rows_use_the_papers_metric_and_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path().join("r.db")).unwrap();
    let k = key("EleutherAI/pythia-70m", "step2000");
    s.record(&k, &record("memo_trap", 4.0, 3)).unwrap();
    let mut mc1 = record("truthfulqa_mc1", 1.0, 3);
    mc1.metrics = vec![MetricRow {
        name: "mc1".into(),
        value: 0.25,
        stderr: Some(0.1),
    }];
    s.record(&k, &mc1).unwrap();
    let rows = s.report_rows(None).unwrap();
    let flat: Vec<(&str, f64, f64)> = rows.iter().map(|r| (r.task.as_str(), r.accuracy, r.accuracy_se)).collect();
    assert_eq!(flat, [("isp_memo_trap", 0.4, 0.01), ("truthfulqa_mc1", 0.25, 0.1)]);
    assert_eq!((rows[0].model.as_str(), rows[0].revision.as_str()), ("EleutherAI/pythia-70m", "step2000"));
    assert!(s.report_rows(Some("lm-eval-0.4")).unwrap().is_empty());
    // The same checkpoint scored on another device: ambiguous for a report.
    let cuda = RunKey {
        device: "cuda".into(),
        ..k.clone()
    };
    s.record(&cuda, &record("memo_trap", 4.0, 3)).unwrap();
    let e = s.report_rows(Some("paper-2023")).unwrap_err().to_string();
    assert!(e.contains("scored twice") && e.contains("memo_trap"), "{e}");
}

#[test]
fn merge_is_idempotent_and_reports_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (dir.path().join("a.db"), dir.path().join("b.db"), dir.path().join("c.db"));
    {
        let mut sa = Store::open(&a).unwrap();
        sa.record(&key("m-70m", "step1"), &record("neqa", 1.0, 3)).unwrap();
        let mut sb = Store::open(&b).unwrap();
        sb.record(&key("m-70m", "step1"), &record("neqa", 1.0, 3)).unwrap(); // identical
        sb.record(&key("m-70m", "step1"), &record("memo_trap", 2.0, 3)).unwrap(); // new task, same run
        sb.record(&key("m-70m", "step2"), &record("neqa", 3.0, 3)).unwrap(); // new run
        sb.finish_run(&key("m-70m", "step2")).unwrap();
        let mut sc = Store::open(&c).unwrap();
        sc.record(&key("m-70m", "step1"), &record("neqa", 5.0, 3)).unwrap(); // conflict
    }
    let mut sa = Store::open(&a).unwrap();
    let r = sa.merge_from(&b).unwrap();
    assert_eq!((r.added, r.identical, r.conflicts.len()), (2, 1, 0));
    let again = sa.merge_from(&b).unwrap();
    assert_eq!((again.added, again.identical, again.conflicts.len()), (0, 3, 0));
    let r = sa.merge_from(&c).unwrap();
    assert_eq!((r.added, r.identical), (0, 0));
    assert_eq!(r.conflicts.len(), 1, "{:?}", r.conflicts);
    assert!(
        r.conflicts[0].contains("m-70m@step1") && r.conflicts[0].contains("neqa") && r.conflicts[0].contains("acc"),
        "{:?}",
        r.conflicts
    );
    // The conflicting task kept A's values.
    assert_eq!(sa.task_record(&key("m-70m", "step1"), "neqa").unwrap().unwrap(), record("neqa", 1.0, 3));
    assert_eq!(sa.task_record(&key("m-70m", "step2"), "neqa").unwrap().unwrap(), record("neqa", 3.0, 3));
    drop(sa);
    assert_eq!(count(&a, "requests"), 3 * 6);
    assert_eq!(count(&a, "runs"), 2);
    let c2 = rusqlite::Connection::open(&a).unwrap();
    let finished: Option<String> = c2
        .query_row("SELECT finished_at FROM runs WHERE revision='step2'", [], |r| r.get(0))
        .unwrap();
    assert!(finished.is_some());
    // Merging into a store that does not exist yet creates it; a store cannot be merged into itself.
    let mut fresh = Store::open(dir.path().join("new.db")).unwrap();
    assert_eq!(fresh.merge_from(&a).unwrap().added, 3);
    assert!(fresh.merge_from(&dir.path().join("new.db")).is_err());
    assert!(fresh
        .merge_from(&dir.path().join("absent.db"))
        .unwrap_err()
        .to_string()
        .contains("absent.db"));
    // Another application's SQLite file is refused and left untouched.
    let foreign = dir.path().join("foreign.db");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE t (x INTEGER)")
        .unwrap();
    let e = fresh.merge_from(&foreign).unwrap_err().to_string();
    assert!(e.contains("foreign.db") && e.contains("not an lmscore results store"), "{e}");
    let tables: i64 = rusqlite::Connection::open(&foreign)
        .unwrap()
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tables, 1);
}

#[test]
fn bad_files_are_errors_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, b"this is not a sqlite database at all, just some text that is long enough").unwrap();
    let e = Store::open(&junk).err().expect("junk must be refused").to_string();
    assert!(e.contains("junk.db"), "{e}");
    let e = Store::open(dir.path().join("no/such/dir/r.db")).err().unwrap().to_string();
    assert!(e.contains("does not exist"), "{e}");
    // A store with another schema version.
    let other = dir.path().join("v9.db");
    drop(Store::open(&other).unwrap());
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute("UPDATE meta SET value='9' WHERE key='schema_version'", [])
        .unwrap();
    let e = Store::open(&other).err().unwrap().to_string();
    assert!(e.contains("schema version 9"), "{e}");
}
