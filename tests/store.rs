//! The SQLite results store: one transaction per (checkpoint, task), no duplicates, idempotent merges
//! that report conflicts instead of overwriting.

use lmscore::store::{DocRow, Inputs, MetricRow, RequestRow, RunKey, Store, TaskRecord, TaskState, Timing};

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
        docs: (0..n_docs)
            .map(|d| DocRow {
                metric: "acc".into(),
                doc: d,
                value: (d % 2) as f64,
                chance: 0.5,
            })
            .collect(),
        inputs: Inputs::default(),
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
    assert!(!s.is_done(&k, "memo_trap", &Inputs::default()).unwrap());
    let rec = record("memo_trap", 3.0, 5);
    assert!(s.record(&k, &rec, false).unwrap());
    assert!(s.is_done(&k, "memo_trap", &Inputs::default()).unwrap());
    assert!(!s.is_done(&k, "neqa", &Inputs::default()).unwrap());
    assert!(!s
        .is_done(&key("EleutherAI/pythia-70m", "step4000"), "memo_trap", &Inputs::default())
        .unwrap());
    // Recording again writes nothing.
    assert!(!s.record(&k, &record("memo_trap", 9.0, 7), false).unwrap());
    assert_eq!(s.task_record(&k, "memo_trap").unwrap().unwrap(), rec);
    drop(s);
    assert_eq!(count(&path, "requests"), 10);
    assert_eq!(count(&path, "task_results"), 2);
    assert_eq!(count(&path, "runs"), 1);
    // Reopening finds everything; the file is in WAL mode.
    let s = Store::open(&path).unwrap();
    assert!(s.is_done(&k, "memo_trap", &Inputs::default()).unwrap());
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
    let e = s.record(&k, &rec, false).unwrap_err().to_string();
    assert!(e.contains("r.db") && e.contains("neqa"), "{e}");
    assert!(!s.is_done(&k, "neqa", &Inputs::default()).unwrap());
    drop(s);
    assert_eq!(count(&path, "requests"), 0);
    assert_eq!(count(&path, "task_results"), 0);
    assert_eq!(count(&path, "task_runs"), 0);
}

#[test]
fn all_task_results_for_reports() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path().join("r.db")).unwrap();
    s.record(&key("b-160m", "step2"), &record("neqa", 1.0, 2), false).unwrap();
    s.record(&key("a-70m", "step1"), &record("neqa", 2.0, 3), false).unwrap();
    s.record(&key("a-70m", "step1"), &record("memo_trap", 4.0, 3), false).unwrap();
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
    s.record(&k, &record("memo_trap", 4.0, 3), false).unwrap();
    let mut mc1 = record("truthfulqa_mc1", 1.0, 3);
    mc1.metrics = vec![MetricRow {
        name: "mc1".into(),
        value: 0.25,
        stderr: Some(0.1),
    }];
    s.record(&k, &mc1, false).unwrap();
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
    s.record(&cuda, &record("memo_trap", 4.0, 3), false).unwrap();
    let e = s.report_rows(Some("paper-2023")).unwrap_err().to_string();
    assert!(e.contains("scored twice") && e.contains("memo_trap"), "{e}");
}

#[test]
fn merge_is_idempotent_and_reports_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (dir.path().join("a.db"), dir.path().join("b.db"), dir.path().join("c.db"));
    {
        let mut sa = Store::open(&a).unwrap();
        sa.record(&key("m-70m", "step1"), &record("neqa", 1.0, 3), false).unwrap();
        let mut sb = Store::open(&b).unwrap();
        sb.record(&key("m-70m", "step1"), &record("neqa", 1.0, 3), false).unwrap(); // identical
        sb.record(&key("m-70m", "step1"), &record("memo_trap", 2.0, 3), false).unwrap(); // new task, same run
        sb.record(&key("m-70m", "step2"), &record("neqa", 3.0, 3), false).unwrap(); // new run
        sb.finish_run(&key("m-70m", "step2")).unwrap();
        let mut sc = Store::open(&c).unwrap();
        sc.record(&key("m-70m", "step1"), &record("neqa", 5.0, 3), false).unwrap();
        // conflict
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

fn with_inputs(mut rec: TaskRecord, weights: &str, data: &str) -> TaskRecord {
    rec.inputs = Inputs {
        weights: weights.into(),
        data: data.into(),
    };
    rec
}

#[test]
fn a_task_is_complete_only_for_the_inputs_it_was_computed_from() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let mut s = Store::open(&path).unwrap();
    let k = key("tiny", "step1");
    let (a, b) = (("w-aaaaaaaaaaaaaaaa", "d-aaaaaaaaaaaaaaaa"), ("w-bbbbbbbbbbbbbbbb", "d-bbbbbbbbbbbbbbbb"));
    let inputs = |(w, d): (&str, &str)| Inputs {
        weights: w.into(),
        data: d.into(),
    };
    let first = with_inputs(record("neqa", 1.0, 3), a.0, a.1);
    assert!(s.record(&k, &first, false).unwrap());
    assert_eq!(s.task_state(&k, "neqa", &inputs(a)).unwrap(), TaskState::Done);
    assert!(!s.is_done(&k, "neqa", &inputs((a.0, b.1))).unwrap());
    match s.task_state(&k, "neqa", &inputs((b.0, a.1))).unwrap() {
        TaskState::Stale(why) => assert!(why.contains("checkpoint differs") && !why.contains("task data"), "{why}"),
        other => panic!("{other:?}"),
    }
    match s.task_state(&k, "neqa", &inputs((a.0, b.1))).unwrap() {
        TaskState::Stale(why) => assert!(why.contains("task data differs") && why.contains("d-aaaaaaaaa"), "{why}"),
        other => panic!("{other:?}"),
    }
    // The same inputs again: nothing written (another process stored it first).
    assert!(!s.record(&k, &with_inputs(record("neqa", 7.0, 5), a.0, a.1), false).unwrap());
    // Other inputs: replaced in one transaction, no row of the old record left.
    let second = with_inputs(record("neqa", 2.0, 5), b.0, b.1);
    assert!(s.record(&k, &second, false).unwrap());
    assert_eq!(s.task_record(&k, "neqa").unwrap().unwrap(), second);
    assert_eq!(
        s.task_state(&k, "neqa", &inputs(a)).unwrap(),
        TaskState::Stale(
            "the checkpoint differs (stored w-bbbbbbbbbb, now w-aaaaaaaaaa) and the task data differs (stored sha256 d-bbbbbbbbbb, now d-aaaaaaaaaa)"
                .into()
        )
    );
    // Forced: replaced even from the same inputs.
    let forced = with_inputs(record("neqa", 3.0, 4), b.0, b.1);
    assert!(s.record(&k, &forced, true).unwrap());
    assert_eq!(s.task_record(&k, "neqa").unwrap().unwrap(), forced);
    drop(s);
    assert_eq!(count(&path, "requests"), 8);
    assert_eq!(count(&path, "task_results"), 2);
    assert_eq!(count(&path, "task_runs"), 1);

    // A merge treats other inputs as a conflict, even with equal values.
    let other = dir.path().join("o.db");
    Store::open(&other)
        .unwrap()
        .record(&k, &with_inputs(record("neqa", 3.0, 4), a.0, b.1), false)
        .unwrap();
    let r = Store::open(&path).unwrap().merge_from(&other).unwrap();
    assert_eq!(r.conflicts.len(), 1);
    assert!(
        r.conflicts[0].contains("other inputs") && r.conflicts[0].contains("checkpoint differs"),
        "{:?}",
        r.conflicts
    );
}

/// The schema of lmscore's first stores (no inputs recorded), in WAL mode as they were left.
fn version_1_store(path: &std::path::Path) {
    let c = rusqlite::Connection::open(path).unwrap();
    let _: String = c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).unwrap();
    c.execute_batch(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE runs (id INTEGER PRIMARY KEY, model TEXT NOT NULL, revision TEXT NOT NULL, dtype TEXT NOT NULL,
             protocol TEXT NOT NULL, device TEXT NOT NULL, lmscore_version TEXT NOT NULL, started_at TEXT NOT NULL, finished_at TEXT,
             UNIQUE (model, revision, dtype, protocol, device));
         CREATE TABLE task_runs (run_id INTEGER NOT NULL REFERENCES runs(id), task TEXT NOT NULL, n_docs INTEGER NOT NULL,
             skipped_rows INTEGER NOT NULL, naive_tokens INTEGER NOT NULL, computed_tokens INTEGER NOT NULL, seconds REAL NOT NULL,
             lmscore_version TEXT NOT NULL, finished_at TEXT NOT NULL, PRIMARY KEY (run_id, task));
         CREATE TABLE requests (run_id INTEGER NOT NULL REFERENCES runs(id), task TEXT NOT NULL, doc INTEGER NOT NULL, choice INTEGER NOT NULL,
             logprob REAL NOT NULL, is_greedy INTEGER NOT NULL, n_tokens INTEGER NOT NULL, PRIMARY KEY (run_id, task, doc, choice)) WITHOUT ROWID;
         CREATE TABLE task_results (run_id INTEGER NOT NULL REFERENCES runs(id), task TEXT NOT NULL, metric TEXT NOT NULL, value REAL,
             stderr REAL, n INTEGER NOT NULL, PRIMARY KEY (run_id, task, metric)) WITHOUT ROWID;
         INSERT INTO meta VALUES ('schema_version', '1');
         INSERT INTO runs VALUES (1, 'm-70m', 'step1', 'f32', 'paper-2023', 'cpu', '0.1.0', '2024-01-01T00:00:00Z', NULL);
         INSERT INTO task_runs VALUES (1, 'neqa', 1, 0, 10, 5, 0.5, '0.1.0', '2024-01-01T00:00:01Z');
         INSERT INTO requests VALUES (1, 'neqa', 0, 0, -1.0, 1, 2), (1, 'neqa', 0, 1, -2.0, 0, 2);
         INSERT INTO task_results VALUES (1, 'neqa', 'acc', 1.0, 0.0, 1);",
    )
    .unwrap();
}

#[test]
fn version_1_stores_are_read_as_they_are_and_migrated_by_writers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    version_1_store(&path);
    let bytes = std::fs::read(&path).unwrap();
    let k = key("m-70m", "step1");
    let real = Inputs {
        weights: "w".into(),
        data: "d".into(),
    };
    {
        // Read-only: readable without its digest columns, and not migrated.
        let s = Store::open_read_only(&path).unwrap();
        let rec = s.task_record(&k, "neqa").unwrap().unwrap();
        assert_eq!((rec.n_docs, rec.requests.len(), rec.inputs.clone()), (1, 2, Inputs::default()));
        assert_eq!(s.report_rows(None).unwrap().len(), 1);
        assert!(matches!(s.task_state(&k, "neqa", &real).unwrap(), TaskState::Stale(_)));
        let mut fresh = Store::open(dir.path().join("new.db")).unwrap();
        assert_eq!(fresh.merge_store(&s).unwrap().added, 1);
    }
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "a reader changed the version-1 store");
    // A writer migrates it: the old task is kept, counts as computed from unknown inputs, and is replaced
    // when scored again.
    let mut s = Store::open(&path).unwrap();
    match s.task_state(&k, "neqa", &real).unwrap() {
        TaskState::Stale(why) => assert!(why.contains("no record of its inputs"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(s.record(&k, &with_inputs(record("neqa", 1.0, 3), "w", "d"), false).unwrap());
    assert!(s.is_done(&k, "neqa", &real).unwrap());
    drop(s);
    let c = rusqlite::Connection::open(&path).unwrap();
    let q = |sql: &str| -> i64 { c.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(q("SELECT CAST(value AS INTEGER) FROM meta WHERE key='schema_version'"), 3);
    assert_eq!(q("PRAGMA application_id"), lmscore::store::APPLICATION_ID);
    assert_eq!(q("PRAGMA user_version"), 3);
    assert_eq!(q("SELECT count(*) FROM requests"), 6);
}

#[test]
fn writers_refuse_other_databases_and_leave_them_alone() {
    let dir = tempfile::tempdir().unwrap();
    for (name, sql) in [
        ("tables.db", "CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);"),
        (
            "meta.db",
            "CREATE TABLE meta (key TEXT, value TEXT); INSERT INTO meta VALUES ('other', 'x');",
        ),
        ("app_id.db", "PRAGMA application_id = 42;"),
        (
            "bad_version.db",
            "CREATE TABLE meta (key TEXT, value TEXT); INSERT INTO meta VALUES ('schema_version', 'abc');",
        ),
    ] {
        let path = dir.path().join(name);
        rusqlite::Connection::open(&path).unwrap().execute_batch(sql).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let e = Store::open(&path).err().expect("must be refused").to_string();
        assert!(e.contains(name) && e.contains("not an lmscore results store"), "{e}");
        let e = Store::open_read_only(&path).err().expect("must be refused").to_string();
        assert!(e.contains(name) && e.contains("not an lmscore results store"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{name} changed");
        let siblings: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(siblings.iter().all(|f| !f.to_string_lossy().contains("-wal")), "{siblings:?}");
    }
}

#[test]
fn per_document_values_and_timings_are_stored_reported_and_merged() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let mut s = Store::open(&a).unwrap();
    let k1 = key("EleutherAI/pythia-70m", "step2000");
    let k2 = key("EleutherAI/pythia-70m", "step4000");
    s.record(&k1, &record("memo_trap", 3.0, 4), false).unwrap();
    s.record(&k2, &record("memo_trap", 4.0, 4), false).unwrap();
    // Read back with the task, in doc order.
    assert_eq!(s.task_record(&k1, "memo_trap").unwrap().unwrap().docs, record("memo_trap", 3.0, 4).docs);
    let items = s.report_items(None, "acc").unwrap();
    assert_eq!(items.chance.get("isp_memo_trap"), Some(&0.5));
    assert!(!items.is_empty());
    // acc_norm has no per-document rows in this record: no items for it.
    assert!(s.report_items(None, "acc_norm").unwrap().is_empty());
    let t = Timing {
        download_seconds: 1.5,
        load_seconds: 0.25,
        scoring_seconds: 2.0,
        tasks: 1,
        weights_bytes: 1000,
        params: 70_000_000,
        computed_tokens: 500,
    };
    s.record_timing(&k1, &t).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    s.record_timing(&k1, &t).unwrap();
    let timings = s.timings().unwrap();
    assert_eq!(timings.len(), 1);
    assert_eq!(timings[0].run, k1);
    assert_eq!(timings[0].attempts, 2);
    assert_eq!(
        (
            timings[0].total.download_seconds,
            timings[0].total.scoring_seconds,
            timings[0].total.computed_tokens
        ),
        (3.0, 4.0, 1000)
    );
    let printed = lmscore::report::format_timings(&timings);
    assert!(printed.lines().nth(1).unwrap().contains("\t3.00\t0.50\t4.00\t1000\t250"), "{printed}");
    drop(s);
    // A merge carries documents and timings, and a second merge adds nothing.
    let mut m = Store::open(&b).unwrap();
    m.merge_from(&a).unwrap();
    m.merge_from(&a).unwrap();
    assert_eq!(m.timings().unwrap(), timings);
    assert_eq!(m.task_record(&k2, "memo_trap").unwrap().unwrap().docs.len(), 4);
    drop(m);
    assert_eq!(count(&b, "doc_results"), 8);
    // Reports read them read-only.
    let r = Store::open_read_only(&b).unwrap();
    assert_eq!(r.timings().unwrap().len(), 1);
}

/// The `statfs` magic numbers of network and cluster file systems are named; local ones are not.
#[test]
fn network_filesystems_are_classified() {
    use lmscore::store::classify_fs_type;
    for (magic, name) in [
        (0x6969u64, "NFS"),
        (0x0BD0_0BD0, "Lustre"),
        (0xFF53_4D42, "CIFS/SMB"),
        (0xFE53_4D42, "SMB2"),
        (0x4750_4653, "GPFS"),
        (0x1983_0326, "BeeGFS"),
        (0x00C3_6400, "CephFS"),
        (0x0102_1997, "9p"),
        (0x6573_5546, "FUSE (possibly network)"),
    ] {
        assert_eq!(classify_fs_type(magic), Some(name), "{magic:#x}");
        // A signed 32-bit f_type (some targets) sign-extends to 64 bits: the low 32 bits decide.
        assert_eq!(
            classify_fs_type(magic as u32 as i32 as i64 as u64),
            Some(name),
            "{magic:#x} sign-extended"
        );
    }
    // ext4, xfs, btrfs, tmpfs, overlayfs, zfs, procfs: local.
    for magic in [0xEF53u64, 0x5846_5342, 0x9123_683E, 0x0102_1994, 0x794C_7630, 0x2FC1_2FC1, 0x9FA0] {
        assert_eq!(classify_fs_type(magic), None, "{magic:#x}");
    }
}

/// `fs_type` reads the same magic number `stat -f` does, and a local temporary directory is not flagged (so a
/// sweep there prints no warning).
#[test]
fn local_directories_are_not_network_filesystems() {
    use lmscore::store::{fs_type, network_filesystem};
    let tmp = tempfile::tempdir().unwrap();
    for dir in [tmp.path(), std::path::Path::new("/"), std::path::Path::new("/proc")] {
        if cfg!(target_os = "linux") {
            let got = fs_type(dir).unwrap_or_else(|| panic!("statfs {}", dir.display()));
            if let Ok(o) = std::process::Command::new("stat").args(["-f", "-c", "%t"]).arg(dir).output() {
                let want = u64::from_str_radix(String::from_utf8_lossy(&o.stdout).trim(), 16).unwrap();
                assert_eq!(got, want, "{}: statfs f_type vs stat -f", dir.display());
            }
        }
    }
    assert_eq!(network_filesystem(std::path::Path::new("/proc")), None);
    assert_eq!(
        network_filesystem(tmp.path()),
        None,
        "{} (f_type {:x?}) is not local disk: run the tests with TMPDIR on a local file system",
        tmp.path().display(),
        fs_type(tmp.path())
    );
    assert_eq!(network_filesystem(&tmp.path().join("missing")), None, "statfs fails: no warning");
    let db = tmp.path().join("local.db");
    Store::open(&db).unwrap();
    assert!(db.is_file());
}
