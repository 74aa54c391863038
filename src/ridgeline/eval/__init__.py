"""Quality: perplexity, cloze and multiple-choice scoring with lm-eval semantics, on an offline corpus."""

from ridgeline.eval.cloze import build_cloze, evaluate_cloze
from ridgeline.eval.next_line import build_next_line_task, evaluate_next_line, is_text_line
from ridgeline.eval.perplexity import PerplexityConfig, PerplexityResult, perplexity
from ridgeline.eval.run import (EvalConfig, PreparedEval, check_context, estimate, parse_tasks, prepare_eval, run_eval,
                                 task_files_from_dir)

__all__ = ["EvalConfig", "PerplexityConfig", "PerplexityResult", "PreparedEval", "build_cloze", "build_next_line_task",
           "check_context", "estimate", "evaluate_cloze", "evaluate_next_line", "is_text_line", "parse_tasks",
           "perplexity", "prepare_eval", "run_eval", "task_files_from_dir"]
