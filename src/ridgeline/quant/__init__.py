"""Quantization: exact codecs (ggml blocks, MX/BFP, integers), quantized linear modules and methods.

`quantize_(model, config)` is the one verb (configs: RTNConfig, GPTQConfig, LLMInt8Config,
SmoothQuantConfig, BFPConfig, GGUFConfig); `encode`/`decode` are the exact byte codecs;
`save_quantized`/`load_quantized` keep the result as safetensors; `export_gguf` writes llama.cpp files.
"""

from ridgeline.quant.api import precision_label, quantize_
from ridgeline.quant.calib import CalibrationConfig, calibration_ids
from ridgeline.quant.codec import decode, encode
from ridgeline.quant.config import (BFPConfig, GGUFConfig, GPTQConfig, LLMInt8Config, RTNConfig, SmoothQuantConfig,
                                    make_config)
from ridgeline.quant.export import export_gguf
from ridgeline.quant.save import load_quantized, save_quantized

__all__ = ["quantize_", "export_gguf", "precision_label", "encode", "decode", "save_quantized", "load_quantized", "make_config",
           "RTNConfig", "GPTQConfig", "LLMInt8Config", "SmoothQuantConfig", "BFPConfig", "GGUFConfig",
           "CalibrationConfig", "calibration_ids"]
