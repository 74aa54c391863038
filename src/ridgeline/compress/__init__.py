"""Prompt compression: keep fewer of a long prompt's tokens so its prefill (TTFT) and KV cache shrink.

```python
from ridgeline.compress import compress
r = compress(text, "lingua", rate=2, model=model, tokenizer=tok)   # or budget=512; "selective", "learned", ...
r.kept_ids, r.spans, r.rate, r.compressor_s
```

Methods (api.py): truncate and random baselines, Selective Context (self-information), LLMLingua-style
iterative compression, a learned keep/drop scorer on the model's first layers (LLMLingua-2 style, trained on
LLMLingua's labels) and that scorer fine-tuned with SCRL's self-critical policy gradient. Rates count the
target model's tokens and are met exactly (budget.py). Quality (quality.py): the NLL of the true continuation
given the compressed prompt against the full one, and cloze accuracy on a word inside it.
"""

from ridgeline.compress.api import (METHODS, SCRL, CompressionResult, Learned, LLMLingua, RandomDrop,
                                    SelectiveContext, Truncate, compress, method_config)
from ridgeline.compress.budget import Parts, part_budgets, resolve_budget, select
from ridgeline.compress.evaluate import CorpusEvalConfig, corpus_eval
from ridgeline.compress.lm import self_information
from ridgeline.compress.prompt import Prompt, encode_prompt
from ridgeline.compress.scorer import LearnedScorer, load_scorer, read_scorer_manifest, save_scorer
from ridgeline.compress.scrl import SCRLConfig, policy_gradient_loss, sample_masks, train_scrl
from ridgeline.compress.train import ScorerTrainConfig, TrainResult, train_scorer
from ridgeline.compress.units import PROTECT_CLASSES, UNITS, protected_mask, unit_ranges

__all__ = ["METHODS", "PROTECT_CLASSES", "SCRL", "UNITS", "CompressionResult", "CorpusEvalConfig", "LLMLingua", "Learned",
           "LearnedScorer", "Parts", "Prompt", "RandomDrop", "SCRLConfig", "ScorerTrainConfig", "SelectiveContext",
           "TrainResult", "Truncate", "compress", "corpus_eval", "encode_prompt", "load_scorer", "method_config",
           "part_budgets", "policy_gradient_loss", "protected_mask", "read_scorer_manifest", "resolve_budget",
           "sample_masks", "save_scorer", "select", "self_information", "train_scorer", "train_scrl", "unit_ranges"]
