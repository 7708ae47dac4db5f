"""lmscore as an lm-evaluation-harness model backend: importing this package registers `--model lmscore`."""

from .model import LMScoreError, LMScoreLM

__all__ = ["LMScoreLM", "LMScoreError"]
