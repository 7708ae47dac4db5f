#!/usr/bin/env python3
"""Side-by-side throughput: lmscore's CPU backend vs HF transformers scoring each request on its own.

The reference harness (lm-evaluation-harness, as the paper ran it) scores every (context, continuation)
request with its own forward pass at batch size 1 and runs the LM head on every position. This script
scores the SAME requests (golden token ids of TruthfulQA MC1+MC2 and memo_trap from ../shared/data) both
ways on the SAME checkpoint, in one run, and prints both throughputs, their ratio and the largest
per-request difference in log-likelihood.

    python3 -m venv venv && venv/bin/pip install torch transformers safetensors numpy
    cargo build --release
    venv/bin/python scripts/bench_vs_hf.py                      # a pythia-70m-shaped random checkpoint
    venv/bin/python scripts/bench_vs_hf.py --model DIR --docs 50 # your own checkpoint, first 50 docs per task

Throughput is requested tokens (context + continuation, summed over requests) per second of wall time,
model loading included for both.
"""
import argparse, json, os, subprocess, sys, tempfile, time
from pathlib import Path

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data" / "derived" / "requests"


def load_requests(docs):
    reqs = []
    for line in open(SHARED / "truthfulqa.jsonl").readlines()[:docs]:
        d = json.loads(line)
        for key in ("mc1_continuation_ids", "mc2_continuation_ids"):
            reqs += [(d["context_ids"], c) for c in d[key]]
    for line in open(SHARED / "memo_trap.jsonl").readlines()[:docs]:
        d = json.loads(line)
        reqs += [(d["context_ids"], c) for c in d["continuation_ids"]]
    return reqs


def make_pythia_70m_shaped(path):
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=50304, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                        intermediate_size=2048, max_position_embeddings=2048, rotary_pct=0.25,
                        use_parallel_residual=True, tie_word_embeddings=False)
    model = GPTNeoXForCausalLM(cfg).half()
    model.save_pretrained(path, safe_serialization=True)
    return path


@torch.no_grad()
def hf_per_request(model_dir, reqs, max_len):
    t0 = time.perf_counter()
    model = GPTNeoXForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    out = []
    for ctx, cont in reqs:
        seq = (ctx + cont)[-(max_len + 1):]
        inp = torch.tensor([seq[:-1]])
        logprobs = torch.log_softmax(model(inp).logits[0].float(), dim=-1)
        n = len(cont)
        lp = logprobs[-n:].gather(1, torch.tensor(cont).unsqueeze(1)).sum().item()
        out.append(lp)
    return out, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint dir (default: a pythia-70m-shaped random fp16 checkpoint)")
    ap.add_argument("--docs", type=int, default=40, help="documents per task (default 40)")
    ap.add_argument("--lmscore", default=str(REPO / "target" / "release" / "lmscore"))
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="lmscore-bench-"))
    model_dir = args.model or make_pythia_70m_shaped(tmp / "pythia-70m-shaped")
    max_len = json.load(open(Path(model_dir) / "config.json"))["max_position_embeddings"]
    reqs = load_requests(args.docs)
    naive = sum(len(c) + len(k) for c, k in reqs)
    inp = tmp / "requests.jsonl"
    with open(inp, "w") as f:
        for i, (c, k) in enumerate(reqs):
            f.write(json.dumps({"id": i, "context_ids": c, "continuation_ids": k}) + "\n")

    t0 = time.perf_counter()
    subprocess.run([args.lmscore, "loglikelihood", "--model", str(model_dir), "--input", str(inp),
                    "--output", str(tmp / "scores.jsonl"), "--device", "cpu"], check=True)
    lm_secs = time.perf_counter() - t0
    lm = [json.loads(l)["logprob"] for l in open(tmp / "scores.jsonl")]

    hf, hf_secs = hf_per_request(model_dir, reqs, max_len)
    worst = max(abs(a - b) for a, b in zip(lm, hf))
    print(f"requests: {len(reqs)} (TruthfulQA MC1+MC2 and memo_trap, {args.docs} docs each), {naive} tokens requested")
    print(f"lmscore cpu:            {lm_secs:8.2f} s  {naive / lm_secs:10.0f} tokens/s")
    print(f"HF per-request (cpu):   {hf_secs:8.2f} s  {naive / hf_secs:10.0f} tokens/s")
    print(f"ratio:                  {hf_secs / lm_secs:8.1f}x")
    print(f"max |logprob difference|: {worst:.2e} nats")


if __name__ == "__main__":
    sys.exit(main())
