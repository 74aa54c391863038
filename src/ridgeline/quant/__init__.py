"""Quantization: exact codecs (ggml blocks, MX/BFP, integers), quantized linear modules and methods.

`quantize_(model, config)` is the one verb (configs: RTNConfig, GPTQConfig, LLMInt8Config,
SmoothQuantConfig, BFPConfig, GGUFConfig); `encode`/`decode` are the exact byte codecs;
`save_quantized`/`load_quantized` keep the result as safetensors; `export_gguf` writes llama.cpp files.
"""

from ridgeline.quant.api import bench_info, param_bytes, precision_label, quantize_
from ridgeline.quant.calib import CalibrationConfig, calibration_ids
from ridgeline.quant.codec import decode, encode
from ridgeline.quant.config import (BFPConfig, GGUFConfig, GPTQConfig, LLMInt8Config, RTNConfig, SmoothQuantConfig,
                                    make_config)
from ridgeline.quant.export import EXPORT_TYPES, ExportResult, export_gguf, export_plan_check
from ridgeline.quant.gguf_names import gguf_name
from ridgeline.quant.gguf_plan import gguf_tensor_plan, permute_qk, unpermute_qk
from ridgeline.quant.gguf_tokenizer import hf_tokenizer_kv
from ridgeline.quant.linear import CLASSES, EmulatedLinear, Int4Linear, Int8Linear, QuantLinear, W8A8Linear
from ridgeline.quant.mx import bfp_codes, bfp_values
from ridgeline.quant.save import is_quantized_folder, load_quantized, read_manifest, save_quantized

__all__ = ["CLASSES", "EmulatedLinear", "Int4Linear", "Int8Linear", "QuantLinear", "W8A8Linear", "bfp_codes",
           "bfp_values", "is_quantized_folder", "read_manifest",
           "EXPORT_TYPES", "ExportResult", "gguf_name", "gguf_tensor_plan", "hf_tokenizer_kv", "permute_qk", "unpermute_qk",
           "quantize_", "bench_info", "param_bytes", "export_gguf", "export_plan_check", "precision_label", "encode", "decode", "save_quantized", "load_quantized", "make_config",
           "RTNConfig", "GPTQConfig", "LLMInt8Config", "SmoothQuantConfig", "BFPConfig", "GGUFConfig",
           "CalibrationConfig", "calibration_ids"]
