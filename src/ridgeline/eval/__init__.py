"""Quality: perplexity, cloze and multiple-choice scoring with lm-eval semantics, on an offline corpus."""

from ridgeline.eval.run import EvalConfig, run_eval

__all__ = ["EvalConfig", "run_eval"]
