"""Checks run by tests/lm_eval_harness.rs with a Python that has lm-eval 0.4 installed.

    python check.py compare LM_EVAL_OUT OURS_JSON OURS_SAMPLES_DIR GOLDENS_JSON
        lm-eval's own results and samples files (from `--model lmscore`) against the committed HF goldens, per
        request; `lmscore score`'s results JSON and samples files against lm-eval's (same keys, same values),
        read with lm-eval's own result-reading code (make_table, the results/samples file-name helpers) and the
        samples with `datasets`' json loader, as lm-eval's Hub upload does.
    python check.py rolling LMSCORE_BIN MODEL_DIR GOLDEN_JSON
        the binary's rolling request kind against lm-eval's own window code and against HF per-token goldens.

Prints one summary line per check; any mismatch raises (non-zero exit).
"""

import glob
import json
import math
import os
import subprocess
import sys
import tempfile

import lm_eval.utils as U

GOLDEN_NAMES = {"inverse_scaling_memo_trap": "memo_trap", "inverse_scaling_neqa": "neqa"}


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(l) for l in f if l.strip()]


def compare(lm_eval_out, ours_json, ours_samples, goldens_json):
    goldens = json.load(open(goldens_json))["lm-eval-0.4"]
    files = [f for f in glob.glob(os.path.join(lm_eval_out, "**", "*.json*"), recursive=True)]
    theirs = json.load(open(U.get_latest_filename(U.get_results_filenames(files))))
    ours = json.load(open(ours_json))
    # 1. lm-eval --model lmscore, per request, against HF (batch 1) goldens.
    worst, n = 0.0, 0
    for f in U.get_sample_results_filenames(files):
        task = next(t for t in theirs["results"] if f"/samples_{t}_" in f)
        golden = goldens[GOLDEN_NAMES.get(task, task)]["logprobs"]
        for row in read_jsonl(f):
            for choice, resp in enumerate(row["filtered_resps"]):
                d = abs(float(resp[0]) - golden[row["doc_id"]][choice])
                worst, n = max(worst, d), n + 1
                assert d < 1e-3, f"{task} doc {row['doc_id']} choice {choice}: {resp[0]} vs HF {golden[row['doc_id']][choice]}"
    assert n > 0, "no samples from lm-eval"
    print(f"lm-eval --model lmscore vs HF goldens: {n} requests, worst |delta| {worst:.2e} nats")
    # 2. lmscore score's results document against lm-eval's own.
    for key in ["results", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better", "n-samples", "config", "git_hash", "date", "total_evaluation_time_seconds"]:
        assert key in ours, f"results JSON lacks {key}"
    assert set(ours["results"]) == set(theirs["results"]), (sorted(ours["results"]), sorted(theirs["results"]))
    for section in ["versions", "n-shot", "higher_is_better", "n-samples"]:
        assert ours[section] == theirs[section], f"{section}: {ours[section]} vs lm-eval {theirs[section]}"
    for task, r in theirs["results"].items():
        o = ours["results"][task]
        assert set(o) == set(r), f"{task}: keys {sorted(o)} vs lm-eval {sorted(r)}"
        for k, v in r.items():
            if isinstance(v, float):
                assert math.isclose(o[k], v, rel_tol=0, abs_tol=1e-6), f"{task} {k}: {o[k]} vs lm-eval {v}"
            else:
                assert o[k] == v, f"{task} {k}: {o[k]!r} vs lm-eval {v!r}"
    for k in ["model", "model_args", "batch_size", "device", "limit"]:
        assert k in ours["config"], f"config lacks {k}"
    assert isinstance(ours["date"], float) and float(ours["total_evaluation_time_seconds"]) >= 0
    table = U.make_table(ours)
    for task in theirs["results"]:
        assert task in table, table
    print(f"lmscore score results == lm-eval's for {len(theirs['results'])} tasks; make_table reads them:\n{table}")
    # 3. lmscore score's samples against lm-eval's, row by row.
    our_files = glob.glob(os.path.join(ours_samples, "*.jsonl"))
    assert sorted(U.get_sample_results_filenames(["/" + os.path.relpath(f, "/") for f in our_files])) == sorted("/" + os.path.relpath(f, "/") for f in our_files)
    import datasets

    rows = 0
    for f in U.get_sample_results_filenames(files):
        task = next(t for t in theirs["results"] if f"/samples_{t}_" in f)
        mine = [g for g in our_files if os.path.basename(g).startswith(f"samples_{task}_")]
        assert len(mine) == 1, f"{task}: samples files {mine}"
        a, b = read_jsonl(mine[0]), read_jsonl(f)
        assert len(a) == len(b), f"{task}: {len(a)} samples vs lm-eval {len(b)}"
        for x, y in zip(a, b):
            assert set(x) == set(y), f"{task}: sample keys {sorted(x)} vs lm-eval {sorted(y)}"
            for k in y:
                if k in ("resps", "filtered_resps"):
                    fx = [float(v[0]) for v in x["filtered_resps"]]
                    fy = [float(v[0]) for v in y["filtered_resps"]]
                    assert all(abs(p - q) < 1e-4 for p, q in zip(fx, fy)) and len(fx) == len(fy), f"{task} doc {y['doc_id']}: {fx} vs {fy}"
                    assert [v[1] for v in x["filtered_resps"]] == [v[1] for v in y["filtered_resps"]]
                    assert [len(v) for v in x["resps"]] == [len(v) for v in y["resps"]]
                elif isinstance(y[k], float):
                    assert abs(x[k] - y[k]) < 1e-6, f"{task} doc {y['doc_id']} {k}: {x[k]} vs {y[k]}"
                else:
                    assert x[k] == y[k], f"{task} doc {y['doc_id']} {k}: {x[k]!r} vs lm-eval {y[k]!r}"
            rows += 1
        datasets.load_dataset("json", data_files=mine[0], split="train")
    print(f"lmscore score --log-samples == lm-eval's samples: {rows} rows, same keys, hashes and values; datasets reads them")


def run_binary(binary, model, rows, *flags):
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = os.path.join(tmp, "in.jsonl"), os.path.join(tmp, "out.jsonl")
        with open(inp, "w") as f:
            for i, r in enumerate(rows):
                f.write(json.dumps({"id": i, **r}) + "\n")
        subprocess.run([binary, "loglikelihood", "--model", model, "--input", inp, "--output", out, *flags], check=True, stderr=subprocess.DEVNULL)
        return read_jsonl(out)


def rolling(binary, model, golden_json):
    golden = json.load(open(golden_json))
    # (a) One window (max_length 2048 >= every sequence): the whole sequence after its first token, which is
    # the prefix token, is HF's per-token log-probs summed.
    seqs = [s for s in golden["sequences"] if len(s["ids"]) >= 2]
    got = run_binary(binary, model, [{"rolling_ids": s["ids"][1:], "prefix_id": s["ids"][0]} for s in seqs])
    worst = 0.0
    for s, g in zip(seqs, got):
        want = math.fsum(s["logprobs"])
        d = abs(g["logprob"] - want)
        worst = max(worst, d / len(s["logprobs"]))
        assert d <= 2e-5 * len(s["logprobs"]), f"sequence of {len(s['ids'])}: {g['logprob']} vs HF {want}"
        assert g["windows"] == 1 and g["n_tokens"] == len(s["ids"]) - 1
    print(f"rolling vs HF per-token goldens: {len(seqs)} sequences (up to {max(len(s['ids']) for s in seqs)} tokens), worst {worst:.2e} nats/token")
    # (b) Many windows: lm-eval's own get_rolling_token_windows + make_disjoint_window, each window scored as an
    # ordinary (context, continuation) request, summed as its HF backend sums them.
    cases = [(s["ids"][1:], s["ids"][0], m) for s in seqs if len(s["ids"]) > 20 for m in (5, 16, 64)]
    n = 0
    for ids, prefix, max_len in cases:
        windows = [U.make_disjoint_window(w) for w in U.get_rolling_token_windows(ids, prefix, max_len, 1)]
        parts = run_binary(binary, model, [{"context_ids": c, "continuation_ids": k} for c, k in windows], "--max-length", str(max_len))
        want = sum(p["logprob"] for p in parts)
        g = run_binary(binary, model, [{"rolling_ids": ids, "prefix_id": prefix}], "--max-length", str(max_len))[0]
        assert g["windows"] == len(windows), (g, len(windows))
        assert abs(g["logprob"] - want) <= 1e-6 * len(ids), f"{len(ids)} tokens, max_length {max_len}: {g['logprob']} vs windows {want}"
        n += 1
    print(f"rolling vs lm-eval's own windows: {n} cases (sequences of 23 to 2047 tokens, max_length 5, 16 and 64)")


if __name__ == "__main__":
    {"compare": compare, "rolling": rolling}[sys.argv[1]](*sys.argv[2:])
