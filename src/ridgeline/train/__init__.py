"""Training loops: uptraining after architecture transforms (AdamW or Muon), GQA conversion measured per stage."""

from ridgeline.train.convert import GQAReport, convert_to_gqa, save_model
from ridgeline.train.uptrain import UptrainConfig, UptrainResult, uptrain

__all__ = ["GQAReport", "UptrainConfig", "UptrainResult", "convert_to_gqa", "save_model", "uptrain"]
