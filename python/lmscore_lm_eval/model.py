"""The `lmscore` model class of lm-evaluation-harness 0.4.

Every call hands all of its requests to the standalone binary (`lmscore loglikelihood`) as one JSONL file, so
the binary plans them together: prefix sharing spans every document and task of the call, and the model is
loaded once per call (lm-eval makes one call per request type). Tokenisation, truncation and rolling windows
happen in the binary, the way lm-eval's HF backend does them (see the binary's `loglikelihood --help`).
"""

import ctypes
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import deque

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

eval_logger = logging.getLogger(__name__)

DTYPES = {
    "float16": "f16", "fp16": "f16", "f16": "f16", "half": "f16",
    "bfloat16": "bf16", "bf16": "bf16",
    "float32": "f32", "fp32": "f32", "f32": "f32", "float": "f32",
}


class LMScoreError(RuntimeError):
    """The engine refused or failed: the message is lmscore's own."""


def cuda_driver_present() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def find_binary(explicit=None) -> str:
    """`binary=` model arg, else $LMSCORE_BIN, else `lmscore` on PATH."""
    for candidate, source in ((explicit, "binary="), (os.environ.get("LMSCORE_BIN"), "LMSCORE_BIN")):
        if candidate:
            if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
                raise LMScoreError(f"{source}{candidate}: not an executable file (expected the lmscore binary)")
            return candidate
    found = shutil.which("lmscore")
    if found is None:
        raise LMScoreError(
            "the lmscore binary was not found: set LMSCORE_BIN=/path/to/lmscore, put it on PATH "
            "(cargo install --path . in the lmscore repository), or pass --model_args ...,binary=PATH"
        )
    return found


@register_model("lmscore")
class LMScoreLM(LM):
    def __init__(
        self,
        pretrained: str,
        revision=None,
        device=None,
        dtype=None,
        max_batch_tokens=None,
        max_length=None,
        threads=None,
        binary=None,
        batch_size=None,  # lm-eval passes its --batch_size; lmscore packs by tokens instead
        max_batch_size=None,
        **unknown,
    ) -> None:
        super().__init__()
        if unknown:
            raise LMScoreError(
                f"unknown model_args for lmscore: {', '.join(sorted(unknown))}; known: pretrained, revision, device, "
                "dtype, max_batch_tokens, max_length, threads, binary"
            )
        self.binary = find_binary(binary)
        self.pretrained = str(pretrained)
        self.revision = None if revision is None else str(revision)
        if self.revision is not None and os.path.isdir(self.pretrained):
            raise LMScoreError(f"revision={self.revision} with a local directory pretrained={self.pretrained}: a revision names a Hub commit")
        # The binary's --model: a directory, or a Hub id with its revision (ORG/NAME@REV).
        self.model_spec = self.pretrained if self.revision is None else f"{self.pretrained}@{self.revision}"
        dev = str(device or "cpu")
        if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", dev):
            raise LMScoreError(f"device={dev}: lmscore runs on cpu, cuda or cuda:N (the N-th visible GPU, from 0)")
        # lm-eval passes device=cuda:0 when --device is not given; like its HF backend, fall back to the CPU
        # where there is no CUDA driver.
        if dev.startswith("cuda") and not cuda_driver_present():
            eval_logger.warning("device=%s but no CUDA driver (libcuda.so.1) is present: scoring on the CPU", device)
            dev = "cpu"
        self.flags = ["--device", dev]
        if dtype is not None and str(dtype) != "auto":
            if str(dtype) not in DTYPES:
                raise LMScoreError(f"dtype={dtype}: expected one of {', '.join(sorted(DTYPES))} or auto")
            self.flags += ["--dtype", DTYPES[str(dtype)]]
        for flag, value in (("--max-batch-tokens", max_batch_tokens), ("--max-length", max_length), ("--threads", threads)):
            if value is not None:
                self.flags += [flag, str(int(value))]
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true"):
            self.flags.append("--offline")

    def get_model_info(self) -> dict:
        return {"model_revision": self.revision or "main", "lmscore_binary": self.binary, "lmscore_flags": " ".join(self.flags)}

    def _score(self, rows: list, what: str) -> list:
        """Run the binary on `rows` (JSONL objects with ids 0..n-1); the output rows in input order."""
        if not rows:
            return []
        with tempfile.TemporaryDirectory(prefix="lmscore-lm-eval-") as tmp:
            inp, out = os.path.join(tmp, "requests.jsonl"), os.path.join(tmp, "scores.jsonl")
            with open(inp, "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            cmd = [self.binary, "loglikelihood", "--model", self.model_spec, "--input", inp, "--output", out, *self.flags]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            tail = deque(maxlen=50)

            def relay() -> None:
                # The binary's progress and messages reach the terminal as they come; the tail is kept for errors.
                for raw in proc.stderr:
                    line = raw.decode("utf-8", "replace")
                    tail.append(line.rstrip("\n"))
                    sys.stderr.write(line)
                    sys.stderr.flush()

            reader = threading.Thread(target=relay, daemon=True)
            reader.start()
            rc = proc.wait()
            reader.join()
            if rc != 0:
                errors = [l[len("error: "):] for l in tail if l.startswith("error: ")]
                raise LMScoreError(f"lmscore {what} of {len(rows)} requests failed (exit {rc}): " + ("\n".join(errors) or "\n".join(tail)))
            with open(out, encoding="utf-8") as f:
                scored = [json.loads(l) for l in f if l.strip()]
        if [r["id"] for r in scored] != list(range(len(rows))):
            raise LMScoreError(f"lmscore {what}: expected {len(rows)} scores in input order, got {len(scored)}")
        return scored

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        rows = [{"id": i, "context": r.args[0], "continuation": r.args[1]} for i, r in enumerate(requests)]
        results = [(float(s["logprob"]), bool(s["is_greedy"])) for s in self._score(rows, "loglikelihood")]
        for r, res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", r.args, res)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        rows = [{"id": i, "rolling": r.args[0]} for i, r in enumerate(requests)]
        results = [float(s["logprob"]) for s in self._score(rows, "loglikelihood_rolling")]
        for r, res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, res)
        return results

    def generate_until(self, requests, disable_tqdm: bool = False):
        tasks = sorted({getattr(r, "task_name", None) or "?" for r in requests})
        raise LMScoreError(
            f"lmscore scores text (loglikelihood, loglikelihood_rolling) and does not generate it: the task(s) "
            f"{', '.join(tasks)} need generate_until; run them with another lm-eval model backend"
        )
