//! The results store and hostile files: readers (`report`, the sources of `merge`) never write a byte and
//! work on read-only files; writers (`sweep`, `merge --into`) refuse another application's database;
//! `merge` leaves no target behind when a source is bad. Every refusal is a clear error and a non-zero exit,
//! and the files named stay byte for byte as they were.

use lmscore::store::{Inputs, MetricRow, RequestRow, RunKey, Store, TaskRecord};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn lmscore(args: &[&str]) -> Output {
    run(Command::new(env!("CARGO_BIN_EXE_lmscore")).args(args))
}

fn run(c: &mut Command) -> Output {
    c.stdin(Stdio::null()).output().expect("run lmscore")
}

/// Every file of a directory (recursively) and the sha256 of its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = std::fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            out.extend(snapshot(&p));
        } else if m.is_file() {
            out.insert(p.clone(), lmscore::tasks::hub::sha256_hex(&std::fs::read(&p).unwrap()));
        } else {
            out.insert(p.clone(), "special".into());
        }
    }
    out
}

/// A failed command: non-zero exit, no signal, no panic; its stderr.
fn refused(out: &Output) -> String {
    use std::os::unix::process::ExitStatusExt;
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "expected a failure: {stderr}");
    assert_eq!(out.status.signal(), None, "killed by a signal: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn succeeded(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "lmscore failed: {stderr}");
    stderr
}

/// Another application's SQLite database, in the default rollback-journal mode.
fn foreign_db(path: &Path) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO users (name) VALUES ('ada'), ('grace');
         CREATE TABLE meta (k TEXT, v TEXT);",
    )
    .unwrap();
}

fn key(rev: &str) -> RunKey {
    RunKey {
        model: "pythia-14m".into(),
        revision: rev.into(),
        dtype: "f32".into(),
        protocol: "paper-2023".into(),
        device: "cpu".into(),
    }
}

fn record(task: &str, acc: f64) -> TaskRecord {
    TaskRecord {
        task: task.into(),
        n_docs: 4,
        metrics: vec![MetricRow {
            name: "acc".into(),
            value: acc,
            stderr: Some(0.1),
        }],
        requests: (0..4)
            .map(|d| RequestRow {
                doc: d,
                choice: 0,
                logprob: -1.5 - d as f64,
                is_greedy: true,
                n_tokens: 2,
            })
            .collect(),
        inputs: Inputs {
            weights: "w".repeat(64),
            data: "d".repeat(64),
        },
        ..Default::default()
    }
}

/// A small store that `report` can report on: 2 revisions x 2 tasks.
fn good_store(path: &Path) {
    let mut s = Store::open(path).unwrap();
    for (i, rev) in ["step1000", "step2000"].iter().enumerate() {
        for (j, task) in ["memo_trap", "neqa"].iter().enumerate() {
            s.record(&key(rev), &record(task, 0.25 + 0.25 * i as f64 + 0.1 * j as f64), false)
                .unwrap();
        }
    }
}

#[test]
fn another_applications_database_is_never_written() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let app = d.join("app.sqlite");
    foreign_db(&app);
    let good = d.join("good.db");
    good_store(&good);
    let before = snapshot(d);
    let app_s = app.to_str().unwrap();
    let out_dir = d.join("report");

    // report: read-only, refused, the file byte for byte unchanged and nothing created beside it.
    let e = refused(&lmscore(&["report", "--db", app_s, "--out", out_dir.to_str().unwrap()]));
    assert!(e.contains("app.sqlite") && e.contains("not an lmscore results store"), "{e}");
    // sweep and merge --into: writers refuse it before writing anything.
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample");
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/pythia-tiny");
    let cks = format!("t@s={}", tiny.display());
    let e = refused(&lmscore(&[
        "sweep",
        "--checkpoints",
        &cks,
        "--tasks",
        "neqa",
        "--data-dir",
        data.to_str().unwrap(),
        "--db",
        app_s,
        "--offline",
        "--quiet",
    ]));
    assert!(
        e.contains("app.sqlite") && e.contains("not an lmscore results store") && e.contains("refusing"),
        "{e}"
    );
    let e = refused(&lmscore(&["merge", "--into", app_s, good.to_str().unwrap()]));
    assert!(e.contains("app.sqlite") && e.contains("not an lmscore results store"), "{e}");
    // merge from it: the real reason, and no target left behind.
    let target = d.join("merged.db");
    let e = refused(&lmscore(&["merge", "--into", target.to_str().unwrap(), good.to_str().unwrap(), app_s]));
    assert!(
        e.contains("app.sqlite") && e.contains("not an lmscore results store") && e.contains("users"),
        "{e}"
    );
    assert_eq!(snapshot(d), before, "a file changed or appeared");

    // Through the library too.
    assert!(Store::open(&app).is_err() && Store::open_read_only(&app).is_err());
    assert_eq!(snapshot(d), before);
}

#[test]
fn junk_empty_and_special_files() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let junk = d.join("junk.db");
    std::fs::write(&junk, "not a database, just text that is long enough to have a header ".repeat(10)).unwrap();
    let empty = d.join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    let fifo = d.join("fifo.db");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let good = d.join("good.db");
    good_store(&good);
    let before = snapshot(d);
    let out = d.join("out");
    for (db, why) in [
        (&junk, "junk.db"),
        (&empty, "an empty database"),
        (&fifo, "not a regular file"),
        (&d.to_path_buf(), "not a regular file"),
    ] {
        let e = refused(&lmscore(&["report", "--db", db.to_str().unwrap(), "--out", out.to_str().unwrap()]));
        assert!(e.contains(why), "{}: {e}", db.display());
        let e = refused(&lmscore(&["merge", "--into", d.join("m.db").to_str().unwrap(), db.to_str().unwrap()]));
        assert!(e.contains(why), "{}: {e}", db.display());
    }
    for db in [&junk, &fifo] {
        let e = refused(&lmscore(&["merge", "--into", db.to_str().unwrap(), good.to_str().unwrap()]));
        assert!(e.contains(db.file_name().unwrap().to_str().unwrap()), "{e}");
    }
    assert!(!out.exists());
    assert_eq!(snapshot(d), before, "a file changed or appeared");
    // An empty file is a new store to a writer.
    let mut s = Store::open(&empty).unwrap();
    s.record(&key("step1"), &record("neqa", 0.5), false).unwrap();
}

#[test]
fn merge_checks_every_source_before_creating_the_target() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let good = d.join("good.db");
    good_store(&good);
    let target = d.join("all.db");
    let e = refused(&lmscore(&[
        "merge",
        "--into",
        target.to_str().unwrap(),
        good.to_str().unwrap(),
        d.join("missing.db").to_str().unwrap(),
    ]));
    assert!(e.contains("missing.db") && e.contains("not found"), "{e}");
    let left: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["good.db"], "the merge left files behind");
    // The same merge with good sources works; the sources are unchanged.
    let before = std::fs::read(&good).unwrap();
    succeeded(&lmscore(&["merge", "--into", target.to_str().unwrap(), good.to_str().unwrap()]));
    assert_eq!(std::fs::read(&good).unwrap(), before);
    assert_eq!(Store::open_read_only(&target).unwrap().completed().unwrap().len(), 4);
}

/// `cmd` as a user that cannot write the read-only files: as is for a normal user; under root (which
/// ignores file modes) as `nobody` through setpriv, when that is available.
fn as_reader(args: &[&str]) -> Output {
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
    let setpriv = Path::new("/usr/bin/setpriv");
    if root && setpriv.exists() {
        run(Command::new(setpriv)
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_lmscore")])
            .args(args))
    } else {
        if root {
            println!("note: running as root without setpriv: the read-only modes are not enforced");
        }
        lmscore(args)
    }
}

#[test]
fn readers_work_on_read_only_stores() {
    let tmp = tempfile::tempdir().unwrap();
    let top = tmp.path();
    std::fs::set_permissions(top, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ro = top.join("ro");
    std::fs::create_dir(&ro).unwrap();
    let store = ro.join("results.db");
    good_store(&store);
    // A store left in WAL mode at rest, as older lmscore versions and killed writers leave it.
    let wal_store = ro.join("wal.db");
    good_store(&wal_store);
    {
        let c = rusqlite::Connection::open(&wal_store).unwrap();
        let mode: String = c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
    }
    let out = top.join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).unwrap();
    for f in [&store, &wal_store] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o444)).unwrap();
    }
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let before = snapshot(&ro);
    for (i, db) in [&store, &wal_store].iter().enumerate() {
        let db = db.to_str().unwrap();
        let report_dir = out.join(format!("report{i}"));
        let stderr = succeeded(&as_reader(&["report", "--db", db, "--out", report_dir.to_str().unwrap()]));
        assert!(stderr.contains("4 results"), "{stderr}");
        let tsv = std::fs::read_to_string(report_dir.join("all_results.tsv")).unwrap();
        assert_eq!(tsv.lines().count(), 5, "{tsv}");
        let merged = out.join(format!("merged{i}.db"));
        let stderr = succeeded(&as_reader(&["merge", "--into", merged.to_str().unwrap(), db]));
        assert!(stderr.contains("4 tasks added"), "{stderr}");
    }
    assert_eq!(snapshot(&ro), before, "a read-only store changed");
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_reader_leaves_a_store_byte_for_byte_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let db = d.join("r.db");
    good_store(&db);
    // At rest, a store is one file in rollback-journal mode.
    let mode: String = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
    let before = snapshot(d);
    let s = Store::open_read_only(&db).unwrap();
    assert_eq!(s.completed().unwrap().len(), 4);
    assert_eq!(s.report_rows(None).unwrap().len(), 4);
    drop(s);
    succeeded(&lmscore(&[
        "report",
        "--db",
        db.to_str().unwrap(),
        "--out",
        d.join("out").to_str().unwrap(),
    ]));
    let mut after = snapshot(d);
    after.retain(|p, _| !p.starts_with(d.join("out")));
    assert_eq!(after, before);
}
