"""Training loops: uptraining after architecture transforms (AdamW or Muon), GQA conversion measured per stage,
Medusa heads by self-distillation."""

from ridgeline.train.convert import GQAReport, convert_to_gqa, save_model
from ridgeline.train.medusa import (MedusaHeads, ResBlock, base_info, check_base, load_heads, rank_accuracy,
                                    read_heads_manifest, save_heads, weights_hash)
from ridgeline.train.medusa_data import DistillData, corpus_stream, distill_data
from ridgeline.train.medusa_train import (MedusaConfig, MedusaReport, accuracy_report, checkpoint_path, heads_accuracy,
                                          train_medusa)
from ridgeline.train.uptrain import UptrainConfig, UptrainResult, uptrain

__all__ = ["DistillData", "GQAReport", "MedusaConfig", "MedusaHeads", "MedusaReport", "ResBlock", "UptrainConfig",
           "UptrainResult", "accuracy_report", "base_info", "check_base", "checkpoint_path", "convert_to_gqa",
           "corpus_stream", "distill_data", "heads_accuracy", "load_heads", "rank_accuracy", "read_heads_manifest", "save_heads",
           "save_model", "train_medusa", "uptrain", "weights_hash"]
