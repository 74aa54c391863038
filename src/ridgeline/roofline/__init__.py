"""The analytic roofline, torch-free: the Workload IR (every operator's FLOPs and bytes), its evaluation on a
device, sweeps; `predict(model, device, scenario)` composes them.

```python
from ridgeline.roofline import predict
p = predict("smollm2-135m", "raspberry-pi-5", "SISO", weights="q4_k_m")
p.decode.tokens_per_s, p.decode.bound, p.ttft_s
```
"""

from ridgeline.roofline.evaluate import OpResult, PhaseResult, Prediction, evaluate, prediction_json
from ridgeline.roofline.predict import (compressed, compression_summary, default_kv, default_precision,
                                       parse_compressor, predict, speculative_speedup, variant_spec)
from ridgeline.roofline.sweep import COLUMNS, SweepAxes, check_plot_axes, rows_to_csv, run_sweep, varying_columns
from ridgeline.roofline.workload import (KINDS, Compressor, Operator, Options, Phase, Workload, build_workload,
                                        compressor_ops, layer_kv_bytes)

__all__ = ["COLUMNS", "KINDS", "Compressor", "OpResult", "Operator", "Options", "Phase", "PhaseResult", "Prediction",
           "SweepAxes", "Workload", "build_workload", "check_plot_axes", "compressed", "compression_summary",
           "compressor_ops", "default_kv", "default_precision", "evaluate", "layer_kv_bytes", "parse_compressor",
           "predict", "prediction_json", "rows_to_csv", "run_sweep", "speculative_speedup", "variant_spec",
           "varying_columns"]
