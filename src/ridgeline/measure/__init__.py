"""The measured side: machine probe, measured runs (torch, llama.cpp), the bench grid and Φ on the roofline.

`run_grid(BenchGrid(...), resolve_roofs(...))` is what `ridgeline bench` does; `flat_rows` turns its
records into the rows every table, CSV and plot reads (`record.py` defines both).
"""

from ridgeline.measure.backends import llama_cpp_available
from ridgeline.measure.bench import (SPEC_KINDS, BenchConfig, BenchRecord, SpecSetting, load_runner, prompt_ids,
                                     run_bench, timed_spec_run)
from ridgeline.measure.contention import Contention, Watch, cpu_sample, quick_read_bandwidth, wait_until_quiet
from ridgeline.measure.grid import BenchGrid, Roofs, place_record, resolve_roofs, run_grid
from ridgeline.measure.lean import LeanCausalLM
from ridgeline.measure.phi import place
from ridgeline.measure.probe import (ProbeResult, check_threads, probe, probe_device, probe_lock, roof_for_threads,
                                    save_device, torch_threads)
from ridgeline.measure.record import COLUMNS, flat_row, flat_rows, result_json, run_label
from ridgeline.measure.stats import Stat, cpu_model, machine_info, summarize

__all__ = ["BenchConfig", "BenchGrid", "BenchRecord", "COLUMNS", "Contention", "LeanCausalLM", "ProbeResult", "Roofs",
           "SPEC_KINDS", "SpecSetting", "Stat", "Watch", "check_threads", "cpu_model", "cpu_sample", "flat_row",
           "flat_rows", "llama_cpp_available", "load_runner", "machine_info", "place", "place_record", "probe",
           "probe_device", "probe_lock", "prompt_ids", "quick_read_bandwidth", "resolve_roofs", "result_json",
           "roof_for_threads", "run_bench", "run_grid", "run_label", "save_device", "summarize", "timed_spec_run",
           "torch_threads", "wait_until_quiet"]
