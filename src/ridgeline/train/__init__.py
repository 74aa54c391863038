"""Training: uptraining after architecture transforms (AdamW or Muon), GQA conversion measured per stage, Medusa
heads trained by self-distillation (the heads themselves live in `ridgeline.engine`, which drafts with them), and
distillation (KD on cached teacher top-k logits, LoRA through peft, AdamW or Muon, GPTQ of the merged model, Optuna
search)."""

from ridgeline.engine import (MedusaHeads, ResBlock, base_info, check_base, load_heads, rank_accuracy,  # re-exported
                              read_heads_manifest, save_heads, weights_hash)
from ridgeline.train.convert import GQAReport, check_gqa_run, convert_to_gqa, save_model
from ridgeline.train.distill import check_tokenizers, measure_speed, run_distill
from ridgeline.train.distill_config import (DistillConfig, EvalSettings, QuantSpec, SearchSettings, SpeedSettings,
                                            StudentSpec, parse_data, parse_loss, parse_quantize)
from ridgeline.train.distill_report import DistillResult, mean_ci, summary_lines
from ridgeline.train.distill_stages import Stage, plan_stages
from ridgeline.train.kd import KDLossConfig, TopK, bucket_kl, kd_loss, token_kl
from ridgeline.train.kd_data import DataConfig, KDData, SamplingConfig, build_kd_data, heldout_targets
from ridgeline.train.kd_train import KDTrainConfig, KDTrainResult, heldout_quality, train_kd
from ridgeline.train.lora import LoRAConfig, add_lora, merge_lora
from ridgeline.train.medusa_data import DistillData, corpus_stream, distill_data
from ridgeline.train.medusa_train import (MedusaConfig, MedusaReport, accuracy_report, checkpoint_path, heads_accuracy,
                                          train_medusa)
from ridgeline.train.optim import make_optimizers, split_parameters
from ridgeline.train.search import SearchSpace, evaluate_trial, run_search, trial_task
from ridgeline.train.uptrain import UptrainConfig, UptrainResult, uptrain

__all__ = ["DataConfig", "DistillConfig", "DistillData", "DistillResult", "EvalSettings", "GQAReport", "KDData",
           "KDLossConfig", "KDTrainConfig", "KDTrainResult", "LoRAConfig", "MedusaConfig", "MedusaHeads",
           "MedusaReport", "QuantSpec", "ResBlock", "SamplingConfig", "SearchSettings", "SearchSpace", "SpeedSettings",
           "Stage", "StudentSpec", "TopK", "UptrainConfig", "UptrainResult", "accuracy_report", "add_lora", "base_info",
           "bucket_kl", "build_kd_data", "check_base", "check_gqa_run", "check_tokenizers", "checkpoint_path",
           "convert_to_gqa", "corpus_stream", "distill_data", "evaluate_trial", "heads_accuracy", "heldout_quality",
           "heldout_targets", "kd_loss", "load_heads", "make_optimizers", "mean_ci", "measure_speed", "merge_lora",
           "parse_data", "parse_loss", "parse_quantize", "plan_stages", "rank_accuracy", "read_heads_manifest",
           "run_distill", "run_search", "save_heads", "save_model", "split_parameters", "summary_lines", "token_kl",
           "train_kd", "train_medusa", "trial_task", "uptrain", "weights_hash"]
