//! Sweeps end to end: checkpoint specs and the Hub cache, sharding, a real sweep over two fixture
//! checkpoints, `kill -9` at random moments then resume, and shards merged back into one store.

use lmscore::engine::EngineOptions;
use lmscore::hub::{self, CheckpointSpec, HubOptions, Source};
use lmscore::store::{RunKey, Store, TaskRecord};
use lmscore::sweep::{self, shard_units, Shard, SweepOptions};
use lmscore::tasks::Protocol;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
fn models() -> PathBuf {
    root().join("tests/fixtures/models")
}
fn sample_data() -> PathBuf {
    root().join("data/sample")
}
const TASKS: &str = "memo_trap,neqa";

fn checkpoints_arg() -> String {
    format!(
        "tiny@step1={},tiny@step2={}",
        models().join("pythia-tiny").display(),
        models().join("pythia-tiny-b").display()
    )
}

/// Everything a store holds that is a result (timings and timestamps aside), keyed by (run, task).
fn dump(db: &Path) -> BTreeMap<(RunKey, String), TaskRecord> {
    let s = Store::open(db).unwrap();
    s.completed()
        .unwrap()
        .into_iter()
        .map(|(k, t)| {
            let mut r = s.task_record(&k, &t).unwrap().unwrap();
            r.seconds = 0.0;
            ((k, t), r)
        })
        .collect()
}

fn count(db: &Path, sql: &str) -> i64 {
    rusqlite::Connection::open(db).unwrap().query_row(sql, [], |r| r.get(0)).unwrap()
}

fn lmscore(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lmscore"));
    c.args(args).stdin(Stdio::null());
    c
}

fn sweep_args<'a>(db: &'a str, cks: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let data = Box::leak(sample_data().display().to_string().into_boxed_str());
    let mut v = vec![
        "sweep",
        "--checkpoints",
        cks,
        "--tasks",
        TASKS,
        "--data-dir",
        data,
        "--db",
        db,
        "--offline",
        "--quiet",
    ];
    v.extend(extra);
    v
}

fn run_ok(mut c: Command) -> String {
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "lmscore failed: {stderr}");
    stderr
}

// ---------------------------------------------------------------------------------------------------
// Specs, presets, shards

#[test]
fn checkpoint_specs_parse() {
    let s = CheckpointSpec::parse("EleutherAI/pythia-160m@step2000").unwrap();
    assert_eq!(
        (s.model.as_str(), s.revision.as_str(), &s.source),
        ("EleutherAI/pythia-160m", "step2000", &Source::Hub)
    );
    let s = CheckpointSpec::parse("EleutherAI/pythia-1.4b").unwrap();
    assert_eq!(s.revision, "main");
    let s = CheckpointSpec::parse("pythia-70m@step4000=/data/ckpts/70m=x").unwrap();
    assert_eq!((s.model.as_str(), s.revision.as_str()), ("pythia-70m", "step4000"));
    assert_eq!(s.source, Source::Local(PathBuf::from("/data/ckpts/70m=x")));
    assert_eq!(CheckpointSpec::parse("mine=/tmp/x").unwrap().revision, "main");
    assert_eq!(CheckpointSpec::parse("org/m@refs/pr/1").unwrap().revision, "refs/pr/1");
    for bad in [
        "",
        "@step1",
        "a/b/c@main",
        "org/m@",
        "org/m@step 1",
        "org/m@../x",
        "name@rev=",
        "bad name!",
        "org/..@main",
    ] {
        let e = CheckpointSpec::parse(bad)
            .err()
            .unwrap_or_else(|| panic!("{bad:?} must be refused"))
            .to_string();
        assert!(e.contains("expected HUB_ID"), "{bad:?}: {e}");
    }
    let list = CheckpointSpec::parse_list("EleutherAI/pythia-70m@step1, x@y=/d ,").unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[1].to_string(), "x@y=/d");
    assert!(CheckpointSpec::parse_list(" , ").is_err());
}

#[test]
fn preset_is_the_papers_grid() {
    let (cks, tasks) = sweep::preset("emergent-inabilities").unwrap();
    assert_eq!(tasks, "all");
    assert_eq!(cks.len(), 64);
    assert_eq!(cks[0].to_string(), "EleutherAI/pythia-70m@step2000");
    assert_eq!(cks[7].to_string(), "EleutherAI/pythia-70m@step143000");
    assert_eq!(cks[63].to_string(), "EleutherAI/pythia-12b@step143000");
    let sizes: Vec<&str> = cks.iter().step_by(8).map(|c| c.model.trim_start_matches("EleutherAI/pythia-")).collect();
    assert_eq!(sizes, ["70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b"]);
    assert_eq!(lmscore::tasks::expand_task_list(&tasks, Protocol::Paper2023).unwrap().len(), 12);
    assert!(sweep::preset("nope").is_err());
}

#[test]
fn shards_partition_the_units() {
    for (c, t) in [(64, 12), (2, 2), (3, 5), (1, 1), (5, 1)] {
        let all = shard_units(c, t, None);
        assert_eq!(all.len(), c * t);
        for n in 1..=(c * t + 2) {
            let mut union: Vec<(usize, usize)> = (0..n).flat_map(|i| shard_units(c, t, Some(Shard { index: i, count: n }))).collect();
            union.sort();
            assert_eq!(union, all, "{c} checkpoints x {t} tasks in {n} shards");
            if n <= c {
                // Whole checkpoints per shard.
                for i in 0..n {
                    for (ck, _) in shard_units(c, t, Some(Shard { index: i, count: n })) {
                        assert_eq!(ck % n, i);
                    }
                }
            }
        }
    }
    assert_eq!("3/8".parse::<Shard>().unwrap(), Shard { index: 3, count: 8 });
    for bad in ["8/8", "1/0", "x/2", "1", "-1/2"] {
        assert!(bad.parse::<Shard>().is_err(), "{bad}");
    }
}

// ---------------------------------------------------------------------------------------------------
// The Hugging Face cache, offline

/// A fake HF cache holding `EleutherAI/pythia-tiny@step1` = the pythia-tiny-b fixture (a `stepN`-like
/// revision: pytorch_model.bin only).
fn fake_cache(dir: &Path) -> PathBuf {
    let cache = dir.join("hub");
    let repo = cache.join("models--EleutherAI--pythia-tiny");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/step1"), commit).unwrap();
    let snap = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    for f in ["config.json", "pytorch_model.bin", "tokenizer.json"] {
        std::fs::copy(models().join("pythia-tiny-b").join(f), snap.join(f)).unwrap();
    }
    cache
}

#[test]
fn offline_resolution_from_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = fake_cache(tmp.path());
    let opts = HubOptions {
        offline: true,
        cache_dir: Some(cache.clone()),
        progress: false,
    };
    let spec = CheckpointSpec::parse("EleutherAI/pythia-tiny@step1").unwrap();
    let dir = hub::resolve(&spec, &opts).unwrap();
    assert!(dir.ends_with("snapshots/0123456789abcdef0123456789abcdef01234567"));
    lmscore::checkpoint::Checkpoint::open(&dir).unwrap();
    // A revision given as the commit itself needs no ref.
    let by_commit = CheckpointSpec::parse("EleutherAI/pythia-tiny@0123456789abcdef0123456789abcdef01234567").unwrap();
    assert_eq!(hub::resolve(&by_commit, &opts).unwrap(), dir);

    // What is missing is said, and nothing is downloaded.
    let e = hub::resolve(&CheckpointSpec::parse("EleutherAI/pythia-tiny@step2").unwrap(), &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--offline") && e.contains("step2 was never downloaded"), "{e}");
    let e = hub::resolve(&CheckpointSpec::parse("EleutherAI/pythia-999m@main").unwrap(), &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nothing cached for EleutherAI/pythia-999m"), "{e}");
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let e = hub::resolve(&spec, &opts).unwrap_err().to_string();
    assert!(e.contains("missing tokenizer.json"), "{e}");
    // A sharded layout with a shard absent.
    std::fs::copy(models().join("pythia-tiny/tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    std::fs::remove_file(dir.join("pytorch_model.bin")).unwrap();
    for f in ["pytorch_model.bin.index.json", "pytorch_model-00001-of-00002.bin"] {
        std::fs::copy(models().join("neox-hd64-bin-sharded").join(f), dir.join(f)).unwrap();
    }
    let e = hub::resolve(&spec, &opts).unwrap_err().to_string();
    assert!(e.contains("pytorch_model-00002-of-00002.bin"), "{e}");
    std::fs::copy(
        models().join("neox-hd64-bin-sharded/pytorch_model-00002-of-00002.bin"),
        dir.join("pytorch_model-00002-of-00002.bin"),
    )
    .unwrap();
    assert_eq!(hub::resolve(&spec, &opts).unwrap(), dir);
    // Local directories.
    let local = CheckpointSpec::parse(&format!("x@y={}", tmp.path().join("absent").display())).unwrap();
    assert!(hub::resolve(&local, &opts)
        .unwrap_err()
        .to_string()
        .contains("local model directory not found"));
}

#[test]
fn sweep_from_the_hub_cache_and_an_unreachable_hub() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = fake_cache(tmp.path());
    let db = tmp.path().join("hub.db");
    let db_s = db.display().to_string();
    let mut c = lmscore(&sweep_args(&db_s, "EleutherAI/pythia-tiny@step1", &[]));
    c.env("HF_HUB_CACHE", &cache);
    run_ok(c);
    let rows = Store::open(&db).unwrap().all_task_results().unwrap();
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|r| r.model == "EleutherAI/pythia-tiny" && r.revision == "step1"));

    // Not cached, not offline, and the Hub unreachable: the real download path fails with a clear error.
    let db2 = tmp.path().join("unreachable.db").display().to_string();
    let mut args = sweep_args(&db2, "EleutherAI/pythia-tiny@step2", &[]);
    args.retain(|a| *a != "--offline");
    let mut c = lmscore(&args);
    c.env("HF_HUB_CACHE", &cache).env("HF_ENDPOINT", "http://127.0.0.1:9");
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("EleutherAI/pythia-tiny@step2") && stderr.contains("Hugging Face Hub failed"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------------
// Sweeps

/// A sweep over two local checkpoints x two tasks through the library; the stored log-likelihoods of the
/// first checkpoint are the HF transformers goldens of the same documents.
#[test]
fn sweep_two_checkpoints_two_tasks() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("s.db");
    let opts = SweepOptions {
        checkpoints: CheckpointSpec::parse_list(&checkpoints_arg()).unwrap(),
        tasks: vec!["memo_trap".into(), "neqa".into()],
        protocol: Protocol::Paper2023,
        engine: EngineOptions::default(),
        data_dir: sample_data(),
        db: db.clone(),
        shard: None,
        hub: HubOptions {
            offline: true,
            cache_dir: None,
            progress: false,
        },
        skip_bad_rows: false,
        tokenizer: None,
        progress: false,
        ..Default::default()
    };
    let s = sweep::run(&opts).unwrap();
    assert_eq!((s.units, s.already_done, s.scored, s.failures.len()), (4, 0, 4, 0));
    assert_eq!(count(&db, "SELECT count(*) FROM runs WHERE finished_at IS NOT NULL"), 2);
    assert_eq!(count(&db, "SELECT count(*) FROM requests"), 2 * (20 * 2 + 20 * 2));
    let rows = Store::open(&db).unwrap().all_task_results().unwrap();
    assert_eq!(rows.len(), 8);
    for r in &rows {
        assert_eq!(
            (r.dtype.as_str(), r.protocol.as_str(), r.device.as_str(), r.n),
            ("f32", "paper-2023", "cpu", 20)
        );
        assert!((0.0..=1.0).contains(&r.value) && r.stderr.is_some(), "{r:?}");
    }
    // Against the goldens: sample rows are full-file rows 0-17, 203, 493 (memo_trap) and 0-19 (neqa).
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("tests/fixtures/goldens/pythia-tiny-tasks.json")).unwrap()).unwrap();
    let store = Store::open(&db).unwrap();
    let key = RunKey {
        model: "tiny".into(),
        revision: "step1".into(),
        dtype: "f32".into(),
        protocol: "paper-2023".into(),
        device: "cpu".into(),
    };
    for (task, rows) in [
        ("memo_trap", (0..18).chain([203, 493]).collect::<Vec<usize>>()),
        ("neqa", (0..20).collect()),
    ] {
        let rec = store.task_record(&key, task).unwrap().unwrap();
        let g = &golden["paper-2023"][task]["logprobs"];
        let mut worst = 0f64;
        for req in &rec.requests {
            let want = g[rows[req.doc as usize]][req.choice as usize].as_f64().unwrap();
            worst = worst.max((req.logprob - want).abs() / want.abs().max(1.0));
        }
        assert!(worst < 1e-4, "{task}: worst relative difference {worst} from the goldens");
    }
    // A second run finds everything done and changes nothing.
    let before = dump(&db);
    let s = sweep::run(&opts).unwrap();
    assert_eq!((s.already_done, s.scored), (4, 0));
    assert_eq!(dump(&db), before);
}

/// Start the real binary, SIGKILL it at random moments (seeded), restart until it completes: the store
/// ends with exactly the rows of an uninterrupted run.
#[test]
fn kill_and_resume_loses_and_duplicates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cks = checkpoints_arg();
    let reference = tmp.path().join("ref.db").display().to_string();
    let t0 = Instant::now();
    run_ok(lmscore(&sweep_args(&reference, &cks, &[])));
    let full = t0.elapsed();
    let want = dump(Path::new(&reference));
    assert_eq!(want.len(), 4);

    let seed: u64 = std::env::var("LMSCORE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    println!("kill-and-resume seed {seed} (LMSCORE_SEED={seed} reproduces the kill times); an uninterrupted sweep takes {full:?}");
    let mut x = seed | 1;
    let mut rand01 = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    let db = tmp.path().join("killed.db");
    let db_s = db.display().to_string();
    // Each attempt is killed at a uniform random moment of an uninterrupted run's duration (start-up, model
    // load, scoring and store writes all get hit), `kills` times; then it runs to completion. If an attempt
    // finishes before its kill (timings vary on a busy machine) and fewer than `kills` kills happened, the
    // store is wiped and the sequence starts over, with the faster duration as the new horizon.
    let kills = 6;
    let mut horizon = full;
    let mut killed = 0;
    let mut progress_seen = Vec::new();
    for attempt in 0.. {
        assert!(attempt < 200, "could not complete {kills} kills (seed {seed})");
        let started = Instant::now();
        let mut child = lmscore(&sweep_args(&db_s, &cks, &[]))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if killed < kills {
            let at = horizon.mul_f64(rand01());
            std::thread::sleep(at);
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                killed += 1;
                let done = if db.exists() { dump(&db).len() } else { 0 };
                println!("kill {killed}: after {at:?}, {done}/4 units stored");
                progress_seen.push(done);
                continue;
            }
        }
        let status = child.wait().unwrap();
        assert!(status.success(), "the sweep failed after {killed} kills (seed {seed})");
        if killed >= kills {
            break;
        }
        if killed == 0 {
            // This attempt ran on a fresh store: an uninterrupted run's duration.
            horizon = horizon.min(started.elapsed());
        }
        println!("attempt {attempt} finished before its kill; wiping the store and starting over");
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{db_s}{suffix}"));
        }
        killed = 0;
        progress_seen.clear();
    }
    assert!(killed > 0, "the sweep was never killed (seed {seed})");
    println!("units stored at each kill: {progress_seen:?}");
    let got = dump(&db);
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (k, w) in &want {
        assert_eq!(&got[k], w, "{k:?} differs from the uninterrupted run (seed {seed})");
    }
    // Exactly one row set: no duplicates anywhere.
    assert_eq!(count(&db, "SELECT count(*) FROM runs"), 2);
    assert_eq!(count(&db, "SELECT count(*) FROM runs WHERE finished_at IS NOT NULL"), 2);
    assert_eq!(count(&db, "SELECT count(*) FROM task_runs"), 4);
    assert_eq!(
        count(&db, "SELECT count(*) FROM requests"),
        count(Path::new(&reference), "SELECT count(*) FROM requests")
    );
    assert_eq!(count(&db, "SELECT count(*) FROM task_results"), 8);
}

/// A crash at the worst moment -- rows inserted, transaction not committed -- leaves nothing of that task,
/// and the next run completes it.
#[test]
fn crash_inside_the_store_transaction() {
    let tmp = tempfile::tempdir().unwrap();
    let cks = checkpoints_arg();
    let reference = tmp.path().join("ref.db");
    run_ok(lmscore(&sweep_args(&reference.display().to_string(), &cks, &[])));
    let db = tmp.path().join("crash.db");
    let db_s = db.display().to_string();
    for (n, stored_before) in [(1, 0), (2, 0), (1, 1), (3, 1)] {
        let mut c = lmscore(&sweep_args(&db_s, &cks, &[]));
        c.env("LMSCORE_TEST_ABORT_IN_TRANSACTION", n.to_string());
        let out = c.output().unwrap();
        assert!(!out.status.success(), "write {n} should have aborted");
        assert!(String::from_utf8_lossy(&out.stderr).contains("aborting inside the store transaction"));
        let d = dump(&db);
        assert_eq!(d.len(), stored_before + n - 1, "after aborting in write {n}");
        assert_eq!(count(&db, "SELECT count(*) FROM task_results"), 2 * d.len() as i64);
        assert_eq!(
            count(&db, "SELECT count(*) FROM requests"),
            d.values().map(|r| r.requests.len() as i64).sum::<i64>()
        );
    }
    run_ok(lmscore(&sweep_args(&db_s, &cks, &[])));
    assert_eq!(dump(&db), dump(&reference));
}

/// `--shard 0/2` + `--shard 1/2` merged equals one unsharded run; merging again changes nothing.
#[test]
fn shards_merged_equal_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    let cks = checkpoints_arg();
    let p = |n: &str| tmp.path().join(n).display().to_string();
    let (whole, a, b, merged) = (p("whole.db"), p("a.db"), p("b.db"), p("merged.db"));
    run_ok(lmscore(&sweep_args(&whole, &cks, &[])));
    run_ok(lmscore(&sweep_args(&a, &cks, &["--shard", "0/2"])));
    run_ok(lmscore(&sweep_args(&b, &cks, &["--shard", "1/2"])));
    let (da, db_) = (dump(Path::new(&a)), dump(Path::new(&b)));
    assert!(
        da.keys().all(|(k, _)| k.revision == "step1") && da.len() == 2,
        "shard 0 holds checkpoint 0"
    );
    assert!(
        db_.keys().all(|(k, _)| k.revision == "step2") && db_.len() == 2,
        "shard 1 holds checkpoint 1"
    );
    let stderr = run_ok(lmscore(&["merge", "--into", &merged, &a, &b]));
    assert!(stderr.contains("2 tasks added"), "{stderr}");
    assert_eq!(dump(Path::new(&merged)), dump(Path::new(&whole)));
    // Idempotent.
    let stderr = run_ok(lmscore(&["merge", "--into", &merged, &a, &b, &whole]));
    assert!(
        stderr.contains("0 tasks added, 2 already present") && stderr.contains("0 tasks added, 4 already present"),
        "{stderr}"
    );
    assert_eq!(dump(Path::new(&merged)), dump(Path::new(&whole)));
    assert_eq!(count(Path::new(&merged), "SELECT count(*) FROM runs WHERE finished_at IS NOT NULL"), 2);
    // A conflicting store is reported and not merged.
    rusqlite::Connection::open(&b)
        .unwrap()
        .execute("UPDATE task_results SET value = value / 2 WHERE task = 'neqa' AND metric = 'acc'", [])
        .unwrap();
    let out = lmscore(&["merge", "--into", &merged, &b]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("conflict") && stderr.contains("tiny@step2") && stderr.contains("neqa"),
        "{stderr}"
    );
    assert_eq!(dump(Path::new(&merged)), dump(Path::new(&whole)));
}

#[test]
fn duplicate_checkpoints_and_missing_data_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("d.db").display().to_string();
    let tiny = models().join("pythia-tiny").display().to_string();
    let dup = format!("t@s={tiny},t@s={tiny}");
    let out = lmscore(&sweep_args(&db, &dup, &[])).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("distinct NAME@REV"));
    // A checkpoint directory that does not exist fails that checkpoint only; the other one is scored.
    let cks = format!("gone@s1={},t@s2={tiny}", tmp.path().join("gone").display());
    let out = lmscore(&sweep_args(&db, &cks, &[])).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("gone@s1") && stderr.contains("not found"),
        "{stderr}"
    );
    assert_eq!(dump(Path::new(&db)).len(), 2);
    // Neither --checkpoints nor --preset.
    let out = lmscore(&["sweep", "--db", &db]).output().unwrap();
    assert!(!out.status.success());
}

/// docs/cluster.md's Slurm recipe followed on one machine: N = 3 shards, each `sweep --shard i/3` into its own
/// store in its own "node-local" directory, each store copied (as one file) to a "shared" directory, `merge`
/// into one store, `report`. The merged store holds exactly what one unsharded sweep stores, and the two
/// reports are the same files (only the report's own `date` differs), with no network-filesystem warning.
#[test]
fn slurm_recipe_on_one_machine() {
    let tmp = tempfile::tempdir().unwrap();
    let (tiny, tiny_b) = (models().join("pythia-tiny"), models().join("pythia-tiny-b"));
    // 4 checkpoints over 3 shards: shard 0 gets two (checkpoints 0 and 3), the others one each.
    let cks = format!(
        "pythia-14m@step1000={},pythia-14m@step2000={},pythia-70m@step1000={},pythia-70m@step2000={}",
        tiny.display(),
        tiny_b.display(),
        tiny_b.display(),
        tiny.display()
    );
    let path = |p: &str| tmp.path().join(p);
    let s = |p: &Path| p.display().to_string();
    let n = 3;
    let shared = path("shared");
    std::fs::create_dir(&shared).unwrap();
    for i in 0..n {
        let local = path(&format!("node{i}"));
        std::fs::create_dir(&local).unwrap();
        let db = local.join(format!("shard-{i}.db"));
        let shard = format!("{i}/{n}");
        let stderr = run_ok(lmscore(&sweep_args(&s(&db), &cks, &["--shard", &shard])));
        assert!(stderr.contains(&format!("sweep (shard {i}/{n})")), "{stderr}");
        assert!(!stderr.contains("warning: results store"), "a local store is not flagged: {stderr}");
        // The sweep exited: the store is one self-contained file (no -wal / -shm beside it) to copy.
        let left: Vec<String> = std::fs::read_dir(&local)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, [format!("shard-{i}.db")], "node{i} holds only the store");
        std::fs::copy(&db, shared.join(format!("shard-{i}.db"))).unwrap();
    }
    let merged = path("results.db");
    let mut merge = vec!["merge".to_string(), "--into".into(), s(&merged)];
    merge.extend((0..n).map(|i| s(&shared.join(format!("shard-{i}.db")))));
    let stderr = run_ok(lmscore(&merge.iter().map(String::as_str).collect::<Vec<_>>()));
    assert!(
        stderr.contains("shard-0.db: 4 tasks added") && stderr.contains("shard-1.db: 2 tasks added") && stderr.contains("shard-2.db: 2 tasks added"),
        "{stderr}"
    );

    let whole = path("whole.db");
    run_ok(lmscore(&sweep_args(&s(&whole), &cks, &[])));
    let (dm, dw) = (dump(&merged), dump(&whole));
    assert_eq!(dm.len(), 8, "4 checkpoints x 2 tasks");
    assert_eq!(dm, dw, "merged shards == one unsharded sweep");
    let per_doc = "SELECT count(*) FROM doc_results";
    assert_eq!(count(&merged, per_doc), count(&whole, per_doc));
    assert_eq!(count(&merged, "SELECT count(*) FROM timings"), 4, "one timing row per checkpoint");

    let report = |db: &Path, out: &str| {
        let o = lmscore(&["report", "--db", &s(db), "--out", &s(&path(out))]).output().unwrap();
        assert!(o.status.success(), "report: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let (out_m, out_w) = (report(&merged, "report-merged"), report(&whole, "report-whole"));
    // The printed report: identical but for the timing table's measured seconds and rates.
    let untimed = |s: &str| s.lines().filter(|l| !l.contains("\tcpu\tf32\t")).map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(untimed(&out_m), untimed(&out_w));
    let files = |dir: &Path| {
        let mut v = vec![];
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    v.push(p.strip_prefix(dir).unwrap().to_path_buf());
                }
            }
        }
        v.sort();
        v
    };
    let (rm, rw) = (path("report-merged"), path("report-whole"));
    assert_eq!(files(&rm), files(&rw));
    for f in files(&rm) {
        let (a, b) = (std::fs::read(rm.join(&f)).unwrap(), std::fs::read(rw.join(&f)).unwrap());
        if f.extension().is_some_and(|e| e == "json") {
            // lm-eval's results document carries the time it was written.
            let strip = |b: &[u8]| {
                let mut v: serde_json::Value = serde_json::from_slice(b).unwrap();
                v.as_object_mut().unwrap().remove("date");
                v
            };
            assert_eq!(strip(&a), strip(&b), "{}", f.display());
        } else {
            assert!(a == b, "{} differs between the merged and the unsharded report", f.display());
        }
    }
    for f in ["all_results.tsv", "trends.tsv", "figure1.png", "figure1.svg", "figure1.pdf"] {
        assert!(files(&rm).contains(&PathBuf::from(f)), "{f} written");
    }
    let tsv = std::fs::read_to_string(rm.join("all_results.tsv")).unwrap();
    assert_eq!(tsv.lines().count(), 1 + 8, "{tsv}");
}

/// What a user does after a sweep: `lmscore report --db` reads the store and writes the paper's table,
/// per-run JSON and the figure, one row per (checkpoint, task).
#[test]
fn report_from_the_sweep_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let db_s = db.display().to_string();
    let cks = format!(
        "pythia-14m@step1000={},pythia-14m@step2000={}",
        models().join("pythia-tiny").display(),
        models().join("pythia-tiny-b").display()
    );
    run_ok(lmscore(&sweep_args(&db_s, &cks, &[])));
    let out = dir.path().join("report");
    run_ok(lmscore(&["report", "--db", &db_s, "--out", out.to_str().unwrap()]));
    let tsv = std::fs::read_to_string(out.join("all_results.tsv")).unwrap();
    let rows: Vec<&str> = tsv.lines().skip(1).collect();
    assert_eq!(rows.len(), 4, "2 checkpoints x 2 tasks:\n{tsv}");
    assert!(rows.iter().any(|r| r.starts_with("pythia-14m\tstep2000\tisp_neqa\t")), "{tsv}");
    let stored = dump(&db);
    for r in &rows {
        let f: Vec<&str> = r.split('\t').collect();
        let acc: f64 = f[3].parse().unwrap();
        let task = f[2].trim_start_matches("isp_");
        let (_, rec) = stored
            .iter()
            .find(|((k, t), _)| k.revision == f[1] && t == task)
            .expect("row comes from the store");
        let m = rec.metrics.iter().find(|m| m.name == "acc").unwrap();
        assert!((m.value - acc).abs() < 1e-12, "{r}");
    }
    assert!(out.join("figure1.png").exists() && out.join("figure1.svg").exists() && out.join("figure1.pdf").exists());

    // The store holds every document's value, so the trend tests are paired (McNemar on the same items).
    let trends = std::fs::read_to_string(out.join("trends.tsv")).unwrap();
    for row in trends.lines().skip(1) {
        assert!(row.contains("\tmcnemar-exact\t20\t"), "{row}");
    }
    assert_eq!(
        count(&db, "SELECT count(*) FROM doc_results"),
        2 * 2 * 2 * 20,
        "2 checkpoints x 2 tasks x (acc, acc_norm) x 20 docs"
    );
    // Per checkpoint, the download, load and scoring seconds, printed by report after the statistics.
    assert_eq!(
        count(&db, "SELECT count(*) FROM timings WHERE load_seconds > 0 AND scoring_seconds > 0"),
        2
    );
    run_ok(lmscore(&[
        "report",
        "--db",
        &db_s,
        "--out",
        out.to_str().unwrap(),
        "--metric",
        "acc_norm",
    ]));
    let o = lmscore(&["report", "--db", &db_s, "--out", out.to_str().unwrap()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("download_s\tload_s\tscoring_s") && stdout.contains("pythia-14m\tstep2000\tcpu\tf32\t1\t2\t"),
        "{stdout}"
    );
}

/// `sweep --dry-run` checks the task data, fetches and scores nothing, and says what the sweep would cost.
#[test]
fn dry_run_plans_without_fetching() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("dry.db");
    let db_s = db.display().to_string();
    let cks = format!("{},EleutherAI/pythia-1b@step2000", checkpoints_arg());
    let dry = || {
        let o = lmscore(&sweep_args(&db_s, &cks, &["--dry-run"]))
            .env("HF_HUB_CACHE", dir.path().join("cache"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let stdout = dry();
    assert!(!db.exists(), "a dry run writes no store");
    for needle in [
        "task data: checked (2 tasks",
        "memo_trap: 20 documents, 40 requests",
        "units: 6 in this sweep, 0 already complete",
        "to score over 3 checkpoint(s)",
        "tokens to compute: ",
        "download: 1 checkpoint(s), about 1.9 GiB",
        "estimated scoring time on cpu",
    ] {
        assert!(stdout.contains(needle), "dry run lacks `{needle}`:\n{stdout}");
    }
    // After a real sweep of the local checkpoints, their units are complete and the rate is measured.
    run_ok(lmscore(&sweep_args(&db_s, &checkpoints_arg(), &[])));
    let stdout = dry();
    assert!(
        stdout.contains("4 already complete") && stdout.contains("2 to score over 1 checkpoint(s)"),
        "{stdout}"
    );
    assert!(stdout.contains("measured on 2 earlier checkpoint(s)"), "{stdout}");
}

/// Missing task data stops a sweep before any checkpoint is fetched (it used to download gigabytes first):
/// the error is about the data, not the (unreachable) Hub.
#[test]
fn missing_task_data_stops_the_sweep_before_any_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("tokenizer")).unwrap();
    std::fs::copy(models().join("pythia-tiny/tokenizer.json"), data.join("tokenizer/tokenizer.json")).unwrap();
    let db = dir.path().join("m.db").display().to_string();
    let o = lmscore(&[
        "sweep",
        "--checkpoints",
        "EleutherAI/pythia-70m@step2000",
        "--tasks",
        "memo_trap",
        "--data-dir",
        data.to_str().unwrap(),
        "--db",
        &db,
        "--offline",
        "--quiet",
    ])
    .env("HF_HUB_CACHE", dir.path().join("cache"))
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("memo-trap_classification.jsonl") && !stderr.contains("pythia-70m@step2000 is not complete"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------------
// Resuming by contents, messages, files changing under a sweep

fn options(db: &Path, checkpoints: &str, tasks: &[&str], data_dir: PathBuf) -> SweepOptions {
    SweepOptions {
        checkpoints: CheckpointSpec::parse_list(checkpoints).unwrap(),
        tasks: tasks.iter().map(|t| t.to_string()).collect(),
        data_dir,
        db: db.to_path_buf(),
        hub: HubOptions {
            offline: true,
            cache_dir: None,
            progress: false,
        },
        progress: false,
        ..Default::default()
    }
}

/// Copy the files of a directory (and its subdirectories).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

fn counts(s: &lmscore::sweep::SweepSummary) -> (usize, usize, usize, usize) {
    (s.already_done, s.stale, s.scored, s.failures.len())
}

/// The same NAME@REV with other weights, other task data or an edited custom task is not "already
/// complete": it is scored again and replaces what was stored; the same files elsewhere are complete.
#[test]
fn resume_follows_contents_not_names() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("r.db");
    let a = tmp.path().join("a");
    copy_dir(&models().join("pythia-tiny"), &a);
    let mut o = options(&db, &format!("tiny@step1={}", a.display()), &["memo_trap", "neqa"], sample_data());
    assert_eq!(counts(&sweep::run(&o).unwrap()), (0, 0, 2, 0));
    assert_eq!(counts(&sweep::run(&o).unwrap()), (2, 0, 0, 0));
    // The same files in another directory: still complete.
    let a2 = tmp.path().join("a2");
    copy_dir(&a, &a2);
    o.checkpoints = CheckpointSpec::parse_list(&format!("tiny@step1={}", a2.display())).unwrap();
    assert_eq!(counts(&sweep::run(&o).unwrap()), (2, 0, 0, 0));
    // The same name at another checkpoint: scored again; the store then holds exactly what a fresh sweep
    // of that checkpoint stores.
    let b = format!("tiny@step1={}", models().join("pythia-tiny-b").display());
    o.checkpoints = CheckpointSpec::parse_list(&b).unwrap();
    assert_eq!(counts(&sweep::run(&o).unwrap()), (0, 2, 2, 0));
    let reference = tmp.path().join("ref.db");
    sweep::run(&SweepOptions {
        db: reference.clone(),
        ..o.clone()
    })
    .unwrap();
    assert_eq!(dump(&db), dump(&reference));
    assert_eq!(count(&db, "SELECT count(*) FROM task_runs"), 2);

    // Other task data (a 10-document memo_trap): that task only is scored again.
    let data = tmp.path().join("data");
    copy_dir(&sample_data(), &data);
    let memo = data.join("memo_trap/memo-trap_classification.jsonl");
    let rows: Vec<String> = std::fs::read_to_string(&memo)
        .unwrap()
        .lines()
        .take(10)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&memo, rows.concat()).unwrap();
    o.data_dir = data.clone();
    assert_eq!(counts(&sweep::run(&o).unwrap()), (1, 1, 1, 0));
    let k = sweep::run_key(&o.checkpoints[0], o.protocol, &o.engine);
    let store = Store::open(&db).unwrap();
    assert_eq!(store.task_record(&k, "memo_trap").unwrap().unwrap().n_docs, 10);
    drop(store);
    // Back to the 20-document sample: scored again.
    o.data_dir = sample_data();
    assert_eq!(counts(&sweep::run(&o).unwrap()), (1, 1, 1, 0));
    assert_eq!(Store::open(&db).unwrap().task_record(&k, "memo_trap").unwrap().unwrap().n_docs, 20);

    // An edited custom task.
    let custom = tmp.path().join("mine.jsonl");
    let row = |c: &str| format!("{{\"context\": \"The sky is\", \"choices\": [\" blue\", \"{c}\"], \"gold\": 0}}\n");
    std::fs::write(&custom, row(" green").repeat(3)).unwrap();
    o.tasks = vec![format!("custom:{}", custom.display())];
    assert_eq!(counts(&sweep::run(&o).unwrap()), (0, 0, 1, 0));
    assert_eq!(counts(&sweep::run(&o).unwrap()), (1, 0, 0, 0));
    std::fs::write(&custom, row(" loud").repeat(3)).unwrap();
    assert_eq!(counts(&sweep::run(&o).unwrap()), (0, 1, 1, 0));

    // --force scores everything again.
    o.tasks = vec!["memo_trap".into(), "neqa".into()];
    o.force = true;
    assert_eq!(counts(&sweep::run(&o).unwrap()), (0, 0, 2, 0));
    assert_eq!(dump(&db).len(), 3);
}

/// Two sweeps of the same units into one store at the same time: each counts only what it stored.
#[test]
fn concurrent_sweeps_count_only_what_they_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("c.db");
    let o = options(&db, &checkpoints_arg(), &["memo_trap", "neqa"], sample_data());
    let (o1, o2) = (o.clone(), o.clone());
    let t1 = std::thread::spawn(move || sweep::run(&o1).unwrap());
    let t2 = std::thread::spawn(move || sweep::run(&o2).unwrap());
    let (s1, s2) = (t1.join().unwrap(), t2.join().unwrap());
    println!("{s1:?}\n{s2:?}");
    assert_eq!(s1.scored + s2.scored, 4, "{s1:?} {s2:?}");
    for s in [&s1, &s2] {
        assert_eq!(s.already_done + s.scored + s.stored_by_others, 4, "{s:?}");
    }
    assert_eq!(dump(&db).len(), 4);
}

#[test]
fn sweep_messages_describe_the_shard_and_name_failures_once() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("m.db").display().to_string();
    let stderr = run_ok(lmscore(&sweep_args(&db, &checkpoints_arg(), &["--shard", "3/4"])));
    assert!(
        stderr.contains(&format!(
            "sweep (shard 3/4): 1 unit (1 checkpoint x 1 task); 0 already complete in {db}, 1 to score\n"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("sweep (shard 3/4): 1 unit scored now, 0 already complete, 0 checkpoints failed"),
        "{stderr}"
    );
    assert!(!stderr.contains("1 units") && !stderr.contains("1 checkpoints"), "{stderr}");
    assert!(
        !stderr.contains("fixtures/models"),
        "messages name checkpoints by NAME@REV, not their path: {stderr}"
    );

    let db2 = tmp.path().join("f.db").display().to_string();
    let cks = format!(
        "gone@s1={},t@s2={}",
        tmp.path().join("gone").display(),
        models().join("pythia-tiny").display()
    );
    let out = lmscore(&sweep_args(&db2, &cks, &[])).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.matches("local model directory not found").count(), 1, "{stderr}");
    assert!(stderr.contains("FAILED gone@s1: ") && stderr.contains("1 checkpoint failed"), "{stderr}");
    assert!(
        stderr.contains("sweep: 2 units scored now, 0 already complete, 1 checkpoint failed"),
        "{stderr}"
    );
}

/// Without a terminal (a Slurm log), progress comes as plain lines with rates and ETAs.
#[test]
fn plain_progress_lines_without_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("p.db").display().to_string();
    let cks = checkpoints_arg();
    let mut args = sweep_args(&db, &cks, &["--progress-interval", "0"]);
    args.retain(|a| *a != "--quiet");
    let stderr = run_ok(lmscore(&args));
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("progress: ")).collect();
    assert!(!lines.is_empty(), "{stderr}");
    for l in &lines {
        assert!(
            l.contains("tokens/s") && l.contains("ETA") && l.contains("sweep ETA") && l.contains("units complete"),
            "{l}"
        );
        assert!(l.contains("tiny@step1") || l.contains("tiny@step2"), "{l}");
    }
    // One line per unit, with its time.
    let unit = stderr.lines().find(|l| l.starts_with("tiny@step1 memo_trap: ")).expect("a line per unit");
    assert!(unit.contains(" s, ") && unit.contains("20 docs"), "{unit}");
    assert!(!stderr.contains("fixtures/models"), "{stderr}");
}

/// The next checkpoint's weights truncated while the current one is scored: a failure of that
/// checkpoint (no SIGBUS), the others stored.
#[test]
fn a_checkpoint_truncated_while_prefetched_fails_cleanly() {
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    copy_dir(&models().join("pythia-tiny"), &a);
    copy_dir(&models().join("pythia-tiny"), &b);
    let db = tmp.path().join("t.db");
    let db_s = db.display().to_string();
    let cks = format!("a@s1={},b@s2={}", a.display(), b.display());
    let mut args = sweep_args(&db_s, &cks, &[]);
    let tasks_at = args.iter().position(|a| *a == TASKS).unwrap();
    args[tasks_at] = "memo_trap,neqa,truthfulqa_mc1,truthfulqa_mc2";
    let mut child = lmscore(&args).stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    let mut stderr = String::new();
    let mut truncated = false;
    for line in std::io::BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if !truncated && line.starts_with("a@s1 memo_trap:") {
            // b was fetched while a loads and scores; a still has three tasks to go.
            let f = std::fs::OpenOptions::new().write(true).open(b.join("model.safetensors")).unwrap();
            f.set_len(f.metadata().unwrap().len() / 2).unwrap();
            truncated = true;
        }
        stderr.push_str(&line);
        stderr.push('\n');
    }
    let status = child.wait().unwrap();
    assert!(truncated, "{stderr}");
    assert_eq!(status.signal(), None, "killed by a signal: {stderr}");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("FAILED b@s2: ") && stderr.contains("model.safetensors"), "{stderr}");
    assert!(stderr.contains("changed on disk") || stderr.contains("truncated"), "{stderr}");
    let stored = dump(&db);
    assert_eq!(stored.len(), 4);
    assert!(stored.keys().all(|(k, _)| k.model == "a"));
}
