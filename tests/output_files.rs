//! Output files and hostile inputs (issue 12): `-` is stdout; devices, FIFOs and `/dev/stdout` are written in
//! place; symlinks are followed; temporaries are unique and never left behind; every output is checked
//! before any work (missing directory, a directory, another output, an input); inputs must be regular files
//! of bounded lines; row ids are unambiguous.

use lmscore::output::{check_distinct, OutputTarget};
use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const ROW: &str = r#"{"id": "a", "context_ids": [1, 2, 3], "continuation_ids": [4, 5]}"#;

fn model(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models").join(name)
}

fn lmscore(cwd: &Path, args: &[&str], stdin: Stdio) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_lmscore"))
        .current_dir(cwd)
        .args(args)
        .stdin(stdin)
        .output()
        .unwrap();
    assert!(!stderr(&out).contains("panicked"), "lmscore panicked:\n{}", stderr(&out));
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// `lmscore loglikelihood` on the tiny id-only fixture, run in `dir`.
fn loglikelihood(dir: &Path, input: &str, output: &str) -> Output {
    let m = model("neox-seq");
    lmscore(
        dir,
        &["loglikelihood", "--model", m.to_str().unwrap(), "--input", input, "--output", output],
        Stdio::null(),
    )
}

fn with_input(rows: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, rows).unwrap();
    (dir, input)
}

fn expect_failure(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    assert!(!out.status.success(), "expected failure, got success; stderr:\n{err}");
    for n in needles {
        assert!(err.contains(n), "error should mention {n:?}; got:\n{err}");
    }
}

fn rows(text: &str) -> Vec<serde_json::Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Every name in `dir`, sorted: what a run leaves behind.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn dash_is_stdout() {
    let (dir, _) = with_input(ROW);
    let out = loglikelihood(dir.path(), "in.jsonl", "-");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(rows(&String::from_utf8(out.stdout).unwrap())[0]["id"], "a");
    assert_eq!(names(dir.path()), ["in.jsonl"], "no file `-` and no temporary");
}

#[test]
fn dev_stdout_and_links_through_proc_are_written_through() {
    let (dir, _) = with_input(ROW);
    std::os::unix::fs::symlink("/proc/self/fd/1", dir.path().join("fd1")).unwrap();
    for target in ["/dev/stdout", "fd1"] {
        let out = loglikelihood(dir.path(), "in.jsonl", target);
        assert!(out.status.success(), "{target}: {}", stderr(&out));
        assert_eq!(rows(&String::from_utf8(out.stdout).unwrap()).len(), 1, "{target}");
    }
    let out = loglikelihood(dir.path(), "in.jsonl", "/dev/stderr");
    assert!(out.status.success() && stderr(&out).contains(r#"{"id":"a","#), "{}", stderr(&out));
    // Stdout redirected to a file: the rows land in that file, which stays where it is.
    let captured = dir.path().join("captured");
    let m = model("neox-seq");
    let status = Command::new(env!("CARGO_BIN_EXE_lmscore"))
        .current_dir(dir.path())
        .args([
            "loglikelihood",
            "--model",
            m.to_str().unwrap(),
            "--input",
            "in.jsonl",
            "--output",
            "/dev/stdout",
        ])
        .stdout(std::fs::File::create(&captured).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(rows(&std::fs::read_to_string(&captured).unwrap()).len(), 1);
    assert!(std::fs::symlink_metadata("/dev/stdout").unwrap().file_type().is_symlink());
    assert!(std::fs::symlink_metadata(dir.path().join("fd1")).unwrap().file_type().is_symlink());
    assert_eq!(names(dir.path()), ["captured", "fd1", "in.jsonl"]);
}

#[test]
fn character_device_and_fifo_are_written_in_place() {
    let (dir, _) = with_input(ROW);
    let out = loglikelihood(dir.path(), "in.jsonl", "/dev/null");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());

    let fifo = dir.path().join("pipe");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let m = model("neox-seq");
    let child = Command::new(env!("CARGO_BIN_EXE_lmscore"))
        .current_dir(dir.path())
        .args(["loglikelihood", "--model", m.to_str().unwrap(), "--input", "in.jsonl", "--output", "pipe"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut s = String::new();
            std::fs::File::open(&fifo).unwrap().read_to_string(&mut s).unwrap();
            s
        })
    };
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        drop(std::fs::OpenOptions::new().write(true).open(&fifo)); // unblock the reader
        panic!("writing to a FIFO failed: {}", stderr(&out));
    }
    assert_eq!(rows(&reader.join().unwrap()).len(), 1);
    assert!(
        std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(),
        "the FIFO must stay a FIFO"
    );
    assert_eq!(names(dir.path()), ["in.jsonl", "pipe"]);
}

#[test]
fn a_symlink_is_followed_and_stays_a_symlink() {
    let (dir, _) = with_input(ROW);
    let d = dir.path();
    std::fs::create_dir(d.join("real")).unwrap();
    std::fs::write(d.join("real/scores.jsonl"), "old\n").unwrap();
    std::os::unix::fs::symlink("real/scores.jsonl", d.join("link.jsonl")).unwrap();
    std::os::unix::fs::symlink("real/new.jsonl", d.join("dangling.jsonl")).unwrap();
    for (link, real) in [("link.jsonl", "real/scores.jsonl"), ("dangling.jsonl", "real/new.jsonl")] {
        let out = loglikelihood(d, "in.jsonl", link);
        assert!(out.status.success(), "{link}: {}", stderr(&out));
        assert!(
            std::fs::symlink_metadata(d.join(link)).unwrap().file_type().is_symlink(),
            "{link} replaced"
        );
        assert_eq!(rows(&std::fs::read_to_string(d.join(real)).unwrap())[0]["id"], "a", "{real}");
    }
    assert_eq!(names(d), ["dangling.jsonl", "in.jsonl", "link.jsonl", "real"]);
    assert_eq!(names(&d.join("real")), ["new.jsonl", "scores.jsonl"]);
}

/// Two writes at once to `res.jsonl` and `res.json` (the old code gave both the temporary
/// `res.tmp-lmscore`, and one run's rows ended up in the other's file).
#[test]
fn simultaneous_writes_use_their_own_hidden_temporaries() {
    let dir = tempfile::tempdir().unwrap();
    let a = OutputTarget::check(dir.path().join("res.jsonl")).unwrap();
    let b = OutputTarget::check(dir.path().join("res.json")).unwrap();
    a.write_atomically(|w| {
        w.write_all(b"rows of a\n")?;
        let temps = names(dir.path());
        assert_eq!(temps.len(), 1, "{temps:?}");
        let pid = std::process::id();
        assert!(
            temps[0].starts_with(&format!(".res.jsonl.{pid}.")) && temps[0].ends_with(".tmp"),
            "{temps:?}"
        );
        b.write_bytes(b"rows of b\n").unwrap();
        w.write_all(b"more rows of a\n")
    })
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("res.jsonl")).unwrap(),
        "rows of a\nmore rows of a\n"
    );
    assert_eq!(std::fs::read_to_string(dir.path().join("res.json")).unwrap(), "rows of b\n");
    assert_eq!(names(dir.path()), ["res.json", "res.jsonl"]);
}

#[test]
fn a_failed_write_keeps_the_old_file_and_leaves_no_temporary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.json");
    std::fs::write(&path, "old\n").unwrap();
    let t = OutputTarget::check(&path).unwrap();
    let err = t
        .write_atomically(|w| {
            w.write_all(b"half")?;
            Err(std::io::Error::other("disk full"))
        })
        .unwrap_err();
    assert!(
        err.to_string().contains("out.json: disk full"),
        "names the output, not the temporary: {err}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "old\n");
    assert_eq!(names(dir.path()), ["out.json"]);

    // Through the CLI: a bad row fails the run; the existing output is untouched.
    std::fs::write(dir.path().join("in.jsonl"), format!("{ROW}\n{{\"id\": 2}}\n")).unwrap();
    expect_failure(&loglikelihood(dir.path(), "in.jsonl", "out.json"), &["in.jsonl:2"]);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "old\n");
    assert_eq!(names(dir.path()), ["in.jsonl", "out.json"]);
}

/// A bad output path is reported at once, before the model is even opened (it does not exist here).
#[test]
fn outputs_are_checked_before_any_work() {
    let (dir, _) = with_input(ROW);
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let run = |output: &str| {
        let args = [
            "loglikelihood",
            "--model",
            "/nonexistent/model",
            "--input",
            "in.jsonl",
            "--output",
            output,
        ];
        lmscore(dir.path(), &args, Stdio::null())
    };
    for (output, needles) in [
        ("missing/out.jsonl", &["missing/out.jsonl", "cannot write into directory missing"][..]),
        ("sub", &["sub: is a directory"]),
        ("sub/", &["expected a file name"]),
        ("in.jsonl/out.jsonl", &["not a directory"]),
        ("", &["a value is required for '--output"]),
    ] {
        let out = run(output);
        expect_failure(&out, needles);
        assert!(
            !stderr(&out).contains("model") && !stderr(&out).contains("tmp"),
            "{output}: {}",
            stderr(&out)
        );
    }
    assert_eq!(names(dir.path()), ["in.jsonl", "sub"]);
    assert!(names(&dir.path().join("sub")).is_empty());
}

#[test]
fn an_output_may_not_be_an_input() {
    let (dir, input) = with_input(ROW);
    let d = dir.path();
    std::os::unix::fs::symlink("in.jsonl", d.join("link")).unwrap();
    std::fs::hard_link(&input, d.join("hard")).unwrap();
    for output in ["in.jsonl", "./in.jsonl", "link", "hard"] {
        expect_failure(&loglikelihood(d, "in.jsonl", output), &["same file as the input"]);
        assert_eq!(std::fs::read_to_string(&input).unwrap(), ROW, "{output}");
    }
    // The model directory's files are inputs too.
    let m = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(model("neox-seq").join(f), m.path().join(f)).unwrap();
    }
    let config = std::fs::read(m.path().join("config.json")).unwrap();
    let cfg = m.path().join("config.json");
    let args = [
        "loglikelihood",
        "--model",
        m.path().to_str().unwrap(),
        "--input",
        "in.jsonl",
        "--output",
        cfg.to_str().unwrap(),
    ];
    expect_failure(&lmscore(d, &args, Stdio::null()), &["config.json", "same file as the input"]);
    assert_eq!(std::fs::read(&cfg).unwrap(), config);
    // Stdin redirected from the output file.
    let args = [
        "loglikelihood",
        "--model",
        m.path().to_str().unwrap(),
        "--input",
        "-",
        "--output",
        "in.jsonl",
    ];
    let out = lmscore(d, &args, Stdio::from(std::fs::File::open(&input).unwrap()));
    expect_failure(&out, &["same file as the input stdin"]);
    assert_eq!(names(d), ["hard", "in.jsonl", "link"]);
}

#[test]
fn library_check_distinct_catches_the_same_file_under_two_names() {
    let dir = tempfile::tempdir().unwrap();
    let a = OutputTarget::check(dir.path().join("x.json")).unwrap();
    let b = OutputTarget::check(dir.path().join("./x.json")).unwrap();
    let c = OutputTarget::check(dir.path().join("y.json")).unwrap();
    assert!(check_distinct(&[&a, &c], &[]).is_ok());
    let err = check_distinct(&[&a, &c, &b], &[]).unwrap_err().to_string();
    assert!(err.contains("another output"), "{err}");
    let dev = OutputTarget::check("/dev/stdout").unwrap();
    let dash = OutputTarget::check("-").unwrap();
    assert!(dash.is_stdout() && dev.is_stdout());
    assert!(check_distinct(&[&dash, &dev], &[]).is_err(), "`-` and /dev/stdout are the same output");
    assert_eq!(names(dir.path()), Vec::<String>::new(), "checking creates nothing");
}

fn custom_task(dir: &Path) -> PathBuf {
    let task = dir.join("task.jsonl");
    let rows = [
        r#"{"context": "The sky is", "choices": [" blue", " green"], "gold": 0}"#,
        r#"{"context": "Grass is", "choices": [" green", " blue"], "gold": 0}"#,
    ];
    std::fs::write(&task, rows.join("\n") + "\n").unwrap();
    task
}

#[test]
fn score_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let task = format!("custom:{}", custom_task(d).display());
    let tiny = model("pythia-tiny");
    let score = |extra: &[&str]| {
        let mut args = vec!["score", "--model", tiny.to_str().unwrap(), "--tasks", &task, "--offline"];
        args.extend(extra);
        lmscore(d, &args, Stdio::null())
    };
    // Both outputs on one file: refused before anything is loaded.
    for (a, b) in [("r.json", "r.json"), ("r.json", "./r.json"), ("-", "-"), ("-", "/dev/stdout")] {
        let args = [
            "score",
            "--model",
            "/nonexistent",
            "--tasks",
            "neqa",
            "--output-json",
            a,
            "--log-requests",
            b,
        ];
        let out = lmscore(d, &args, Stdio::null());
        expect_failure(&out, &["another output"]);
        assert!(!stderr(&out).contains("nonexistent"), "{}", stderr(&out));
    }
    // An output on the task's data file: refused after the data is located, before the model runs.
    expect_failure(&score(&["--log-requests", "task.jsonl"]), &["task.jsonl", "same file as the input"]);
    assert_eq!(names(d), ["task.jsonl"]);
    // `-`: the JSON alone on stdout, the table on stderr.
    let out = score(&["--output-json", "-", "--log-requests", "log.jsonl"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is the JSON alone");
    assert_eq!(v["results"][&task]["sample_len"], 2, "{v}");
    assert!(stderr(&out).contains("acc_norm"), "the table goes to stderr");
    assert_eq!(rows(&std::fs::read_to_string(d.join("log.jsonl")).unwrap()).len(), 4);
    assert_eq!(names(d), ["log.jsonl", "task.jsonl"]);
}

#[test]
fn inputs_must_be_regular_files_with_bounded_lines() {
    let (dir, _) = with_input(ROW);
    let d = dir.path();
    expect_failure(&loglikelihood(d, "/dev/zero", "out.jsonl"), &["/dev/zero", "not a regular file"]);
    assert!(Command::new("mkfifo").arg(d.join("fifo")).status().unwrap().success());
    expect_failure(&loglikelihood(d, "fifo", "out.jsonl"), &["fifo", "not a regular file"]);
    expect_failure(&loglikelihood(d, ".", "out.jsonl"), &["a directory"]);
    // `-` is stdin: rows work, an endless line is refused at 256 MiB, naming the line.
    let m = model("neox-seq");
    let args = ["loglikelihood", "--model", m.to_str().unwrap(), "--input", "-", "--output", "out.jsonl"];
    let out = lmscore(d, &args, Stdio::from(std::fs::File::open(d.join("in.jsonl")).unwrap()));
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::remove_file(d.join("out.jsonl")).unwrap();
    let out = lmscore(d, &args, Stdio::from(std::fs::File::open("/dev/zero").unwrap()));
    expect_failure(&out, &["-:1", "longer than 256 MiB"]);
    assert_eq!(names(d), ["fifo", "in.jsonl"]);
}

#[test]
fn ids_are_unambiguous() {
    let no_id = r#"{"context_ids": [1, 2], "continuation_ids": [3]}"#;
    let with_id = |id: &str| format!(r#"{{"id": {id}, "context_ids": [1, 2], "continuation_ids": [3]}}"#);
    // The reported collision: a row without an id (numbered by position) next to an explicit id.
    let (dir, _) = with_input(&[no_id, no_id, no_id, &with_id("3"), no_id].join("\n"));
    expect_failure(
        &loglikelihood(dir.path(), "in.jsonl", "out.jsonl"),
        &["in.jsonl:4", "line 4 has an \"id\" and line 1 has none"],
    );
    let (dir, _) = with_input(&[with_id("\"x\""), no_id.to_string()].join("\n"));
    expect_failure(
        &loglikelihood(dir.path(), "in.jsonl", "out.jsonl"),
        &["in.jsonl:2", "line 1 has an \"id\" and line 2 has none"],
    );
    let (dir, _) = with_input(&[with_id("3"), with_id("\"3\""), with_id("3")].join("\n"));
    expect_failure(
        &loglikelihood(dir.path(), "in.jsonl", "out.jsonl"),
        &["in.jsonl:3", "duplicate id 3", "line 1"],
    );
    for bad in ["1.5", "null", "[1]"] {
        let (dir, _) = with_input(&with_id(bad));
        expect_failure(
            &loglikelihood(dir.path(), "in.jsonl", "out.jsonl"),
            &["in.jsonl:1", "string or an integer"],
        );
        assert_eq!(names(dir.path()), ["in.jsonl"]);
    }
    // No ids at all: numbered 0, 1, 2 in input order, blank lines skipped.
    let (dir, _) = with_input(&[no_id, "", no_id, no_id].join("\n"));
    let out = loglikelihood(dir.path(), "in.jsonl", "-");
    assert!(out.status.success(), "{}", stderr(&out));
    let ids: Vec<_> = rows(&String::from_utf8(out.stdout).unwrap()).iter().map(|r| r["id"].clone()).collect();
    assert_eq!(ids, [0, 1, 2]);
}
