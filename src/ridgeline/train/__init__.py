"""Training loops: uptraining after architecture transforms (AdamW or Muon), GQA conversion measured per stage."""

from ridgeline.train.convert import GQAReport, check_gqa_run, convert_to_gqa, save_model
from ridgeline.train.uptrain import UptrainConfig, UptrainResult, uptrain

__all__ = ["GQAReport", "UptrainConfig", "check_gqa_run", "UptrainResult", "convert_to_gqa", "save_model", "uptrain"]
