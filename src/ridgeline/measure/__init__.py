"""The measured side: machine probe, measured runs (torch, llama.cpp) and Φ on the roofline."""

from ridgeline.measure.bench import BenchConfig, BenchRecord, run_bench
from ridgeline.measure.phi import place, result_json
from ridgeline.measure.probe import probe, probe_device, save_device

__all__ = ["BenchConfig", "BenchRecord", "run_bench", "place", "result_json", "probe", "probe_device", "save_device"]
