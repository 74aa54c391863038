"""Quality: perplexity, cloze and multiple-choice scoring with lm-eval semantics, on an offline corpus."""

from ridgeline.eval.perplexity import PerplexityConfig, PerplexityResult, perplexity
from ridgeline.eval.run import EvalConfig, PreparedEval, check_context, parse_tasks, prepare_eval, run_eval, task_files_from_dir

__all__ = ["PerplexityConfig", "PerplexityResult", "perplexity", "EvalConfig", "parse_tasks", "run_eval", "task_files_from_dir", "PreparedEval", "check_context", "prepare_eval"]
