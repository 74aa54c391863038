"""Rendering for people, torch-free: rich tables, roofline and sweep plots (matplotlib, imported when drawing),
the quality table and the self-contained HTML page. Everything reads records or flat rows, never models."""

from ridgeline.report.accel import (accel_area_table, accel_compare_table, accel_demo_step, accel_front_table,
                                    accel_hls_table, accel_operator_table, accel_phase_table, plot_pareto,
                                    write_accel_outputs)
from ridgeline.report.html import Column, Report
from ridgeline.report.measured import (bench_plots, bench_table, contention_warnings, error_line, measured_points, phi_warnings,
                                       result_roofs, sweep_rows)
from ridgeline.report.plot import Point, Roof, device_roofs, plot_roofline, plot_sweep, prediction_points
from ridgeline.report.quality import quality_columns, quality_rows, quality_table
from ridgeline.report.summary import summary_report
from ridgeline.report.techniques import TECHNIQUES, Technique, committed_results, read_records, resolve
from ridgeline.report.techniques import build_table as build_techniques
from ridgeline.report.techniques_view import add_section as add_techniques_section
from ridgeline.report.techniques_view import explanations as technique_explanations
from ridgeline.report.techniques_view import table_json as techniques_json
from ridgeline.report.techniques_view import markdown_table as techniques_markdown
from ridgeline.report.techniques_view import technique_table, write_technique_outputs
from ridgeline.report.tables import (attention_summary, devices_table, export_table, formats_table, gqa_table, memory_table, models_table, operator_table,
                                     probe_table, quant_table, seconds, serve_tables, si, summary_table)

__all__ = ["Column", "Point", "Report", "Roof", "accel_area_table", "accel_compare_table", "accel_demo_step",
           "accel_front_table", "accel_hls_table", "accel_operator_table", "accel_phase_table", "plot_pareto", "write_accel_outputs", "attention_summary", "bench_plots", "bench_table", "contention_warnings", "device_roofs", "devices_table",
           "error_line", "export_table", "formats_table", "gqa_table", "measured_points", "memory_table", "models_table", "operator_table",
           "phi_warnings", "plot_roofline", "plot_sweep", "prediction_points", "probe_table", "quality_columns",
           "quality_rows", "quality_table", "quant_table", "result_roofs", "seconds", "serve_tables", "si",
           "summary_report", "summary_table", "sweep_rows", "TECHNIQUES", "Technique", "add_techniques_section",
           "build_techniques", "committed_results", "read_records", "resolve", "technique_explanations", "technique_table", "techniques_markdown",
           "techniques_json", "write_technique_outputs"]
