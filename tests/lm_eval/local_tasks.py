"""Local copies of lm-eval's own task YAMLs, for tests that must not touch the Hub.

    python local_tasks.py OUT_DIR SHARED_DATA_DIR

Copies the installed lm-eval's truthfulqa_mc1, truthfulqa_mc2 (with its utils.py), the inverse-scaling
base YAML and inverse_scaling_memo_trap / inverse_scaling_neqa into OUT_DIR/tasks/, changing only where the
data comes from (`dataset_path: json`, `dataset_kwargs.data_files` pointing at a local file; TruthfulQA's
`dataset_name: multiple_choice` is a config of the Hub dataset, which the local json builder does not have,
so it becomes null). Everything else (prompts, choices, delimiters, metrics, versions) is lm-eval's own text.

The data goes to OUT_DIR/data/ in the layout lmscore's --data-dir reads, so both read the same rows:
TruthfulQA's HF-rows JSONL as is; the prize tasks' JSONL with `classes` turned from the release's Python
list repr (a string, which lm-eval's `doc_to_choice: classes` would iterate character by character) into a
JSON list, as the Hub copies lm-eval loads hold it.
"""

import ast
import json
import pathlib
import re
import shutil
import sys

import lm_eval

TASKS = pathlib.Path(lm_eval.__file__).parent / "tasks"
SAMPLE_NOTE = "Converted copies for the lm-eval tests (tests/lm_eval/local_tasks.py); not the release files.\n"


def relocate(text: str, split: str, data_file: pathlib.Path, drop_dataset_name: bool = False) -> str:
    """The YAML with its data source replaced by a local JSON file (one `dataset_path` line must be there)."""
    text, n = re.subn(r"(?m)^dataset_path:.*$", "dataset_path: json", text)
    assert n == 1, "expected one dataset_path line"
    if drop_dataset_name:
        text, n = re.subn(r"(?m)^dataset_name:.*$", "dataset_name: null", text)
        assert n == 1, "expected one dataset_name line"
    return text.rstrip("\n") + f"\ndataset_kwargs:\n  data_files:\n    {split}: {json.dumps(str(data_file))}\n"


def main(out: pathlib.Path, shared_data: pathlib.Path) -> None:
    tasks, data = out / "tasks", out / "data"
    tasks.mkdir(parents=True, exist_ok=True)
    (data / "truthfulqa").mkdir(parents=True, exist_ok=True)
    (data / "SAMPLE.md").write_text(SAMPLE_NOTE)
    tqa = data / "truthfulqa" / "truthfulqa_mc_validation.jsonl"
    shutil.copyfile(shared_data / "truthfulqa" / "truthfulqa_mc_validation.jsonl", tqa)
    src = (TASKS / "truthfulqa" / "truthfulqa_mc1.yaml").read_text()
    (tasks / "truthfulqa_mc1.yaml").write_text(relocate(src, "validation", tqa.resolve(), drop_dataset_name=True))
    shutil.copyfile(TASKS / "truthfulqa" / "truthfulqa_mc2.yaml", tasks / "truthfulqa_mc2.yaml")
    shutil.copyfile(TASKS / "truthfulqa" / "utils.py", tasks / "utils.py")
    shutil.copyfile(TASKS / "inverse_scaling" / "_inverse_scaling_mc_yaml", tasks / "_inverse_scaling_mc_yaml")
    for task, folder, name in [("memo_trap", "memo_trap", "memo-trap_classification.jsonl"), ("neqa", "neqa", "neqa_classification.jsonl")]:
        (data / folder).mkdir(exist_ok=True)
        dst = data / folder / name
        with open(shared_data / folder / name, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as g:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    if isinstance(row["classes"], str):
                        row["classes"] = ast.literal_eval(row["classes"])
                    g.write(json.dumps(row, ensure_ascii=False) + "\n")
        src = (TASKS / "inverse_scaling" / f"inverse_scaling_{task}.yaml").read_text()
        (tasks / f"inverse_scaling_{task}.yaml").write_text(relocate(src, "train", dst.resolve()))


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]))
