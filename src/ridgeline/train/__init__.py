"""Training: uptraining after architecture transforms, GQA conversion measured per stage, and distillation
(KD on cached teacher top-k logits, LoRA through peft, AdamW or Muon)."""

from ridgeline.train.convert import GQAReport, convert_to_gqa, save_model
from ridgeline.train.kd import KDLossConfig, TopK, bucket_kl, kd_loss, token_kl
from ridgeline.train.kd_data import DataConfig, KDData, SamplingConfig, build_kd_data, heldout_targets
from ridgeline.train.kd_train import KDTrainConfig, KDTrainResult, heldout_quality, train_kd
from ridgeline.train.lora import LoRAConfig, add_lora, merge_lora
from ridgeline.train.optim import make_optimizers, split_parameters
from ridgeline.train.uptrain import UptrainConfig, UptrainResult, uptrain

__all__ = ["DataConfig", "GQAReport", "KDData", "KDLossConfig", "KDTrainConfig", "KDTrainResult", "LoRAConfig",
           "SamplingConfig", "TopK", "UptrainConfig", "UptrainResult", "add_lora", "bucket_kl", "build_kd_data",
           "convert_to_gqa", "heldout_quality", "heldout_targets", "kd_loss", "make_optimizers", "merge_lora",
           "save_model", "split_parameters", "token_kl", "train_kd", "uptrain"]
