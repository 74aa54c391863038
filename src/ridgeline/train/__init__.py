"""Training loops: uptraining after architecture transforms (AdamW or Muon)."""

from ridgeline.train.uptrain import UptrainConfig, UptrainResult, uptrain

__all__ = ["UptrainConfig", "UptrainResult", "uptrain"]
