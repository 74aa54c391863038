"""Quality: perplexity, cloze and multiple-choice scoring with lm-eval semantics, on an offline corpus."""

from ridgeline.eval.perplexity import PerplexityConfig, PerplexityResult, perplexity
from ridgeline.eval.run import EvalConfig, estimate, parse_tasks, run_eval, task_files_from_dir

__all__ = ["PerplexityConfig", "PerplexityResult", "perplexity", "EvalConfig", "estimate", "parse_tasks", "run_eval", "task_files_from_dir"]
