"""What a model, a device, a number format and a scenario are: frozen dataclasses and data files, no torch.

`load_spec` reads a model reference (file, folder, GGUF, catalogue id; see `source.py` for what a name
means), `get_device` a device (catalogue id, 'local', a device file), `parse_scenario` a scenario
(SISO/LISO/SILO/LILO or P:N), `get_format`/`get_kv_format` a number or KV-cache format.
"""

from ridgeline.specs.catalogue import catalogue_spec, model_index, model_rows
from ridgeline.specs.device import (DTYPES, DeviceSpec, Provenance, catalogue, get_device, host_device,
                                    load_device_file, saved_devices)
from ridgeline.specs.gguf_header import GGUFHeader, GGUFTensor, read_gguf_header, read_gguf_kv
from ridgeline.specs.gguf_model import spec_from_gguf
from ridgeline.specs.formats import (KV_FORMAT_HELP, KVFormat, NumberFormat, get_format, get_kv_format, list_format_names,
                                     list_formats)
from ridgeline.specs.model import (MLA, Attention, AttentionDims, FFN, Layer, ModelSpec, MoE, TensorSpec, attention_dims, spec_from_config,
                                   with_stored_formats)
from ridgeline.specs.recipes import RECIPES, RecipeContext, is_recipe, tensor_type
from ridgeline.specs.scenario import GRID, Precision, Scenario, Speculation, parse_scenario
from ridgeline.specs.source import (BUNDLED_ID, ModelRef, bundled_gguf, load_spec, parse_model_ref)

__all__ = ["Attention", "AttentionDims", "FFN", "KV_FORMAT_HELP", "Layer", "MLA", "MoE", "BUNDLED_ID", "DTYPES", "DeviceSpec", "GGUFHeader", "GGUFTensor", "GRID", "KVFormat", "ModelRef", "ModelSpec",
           "NumberFormat", "Precision", "Provenance", "RECIPES", "RecipeContext", "Scenario", "Speculation", "TensorSpec", "attention_dims",
           "bundled_gguf", "catalogue", "catalogue_spec", "get_device", "get_format", "get_kv_format",
           "host_device", "is_recipe", "list_format_names", "list_formats", "load_device_file", "load_spec",
           "model_index", "model_rows", "parse_model_ref", "saved_devices", "parse_scenario", "read_gguf_header", "read_gguf_kv", "spec_from_config", "spec_from_gguf", "tensor_type",
           "with_stored_formats"]
