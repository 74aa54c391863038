"""The built-in device catalogue (src/ridgeline/specs/data/devices.json): loads, complete, self-consistent."""

from __future__ import annotations

import json
import re
from importlib import resources

import pytest

from ridgeline.specs.device import DTYPES, catalogue, device_from_dict

REQUIRED_IDS = {
    "raspberry-pi-5", "jetson-orin-nano-super-8g",
    "apple-m1", "apple-m1-pro", "apple-m1-max", "apple-m2", "apple-m2-pro",
    "apple-m3", "apple-m3-pro", "apple-m3-max",
    "rtx-3070-ti-laptop", "rtx-3090", "rtx-4090",
    "a100-40g", "a100-80g", "h100-sxm", "h200",
    "epyc-zen4-2vcpu",
    "rtx-3090-rb-measured", "rtx-3070-ti-laptop-rb-measured", "jetson-orin-nano-super-8g-rb-measured",
    "raspberry-pi-5-rb-measured", "apple-m1-pro-rb-measured",
}
RB_SOURCE = "RooflineBench device_info_db.json / measured results (banbu-ai/roofline_bench)"


def _raw_entries() -> list[dict]:
    text = resources.files("ridgeline.specs").joinpath("data/devices.json").read_text()
    return json.loads(text)["devices"]


@pytest.fixture()
def builtin(tmp_path, monkeypatch):
    """The catalogue with no user-saved devices mixed in."""
    monkeypatch.setenv("RIDGELINE_HOME", str(tmp_path))
    return catalogue()


def test_every_entry_loads_through_the_validator():
    for i, entry in enumerate(_raw_entries()):
        spec = device_from_dict(entry, f"devices.json[{i}]")
        assert spec.id == entry["id"]


def test_catalogue_holds_every_entry(builtin):
    assert {e["id"] for e in _raw_entries()} <= set(builtin)


def test_ids_unique_lowercase_hyphenated():
    ids = [e["id"] for e in _raw_entries()]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    for i in ids:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", i), i


def test_required_ids_present(builtin):
    missing = REQUIRED_IDS - set(builtin)
    assert not missing, sorted(missing)


def test_at_least_one_phone_soc_and_laptop_cpu(builtin):
    assert any(d.kind == "soc" and ("a17" in d.id or "snapdragon" in d.id) for d in builtin.values())
    assert any(d.kind == "cpu" and ("intel" in d.id or "ryzen" in d.id) for d in builtin.values())


def test_fields_sane(builtin):
    for d in builtin.values():
        assert d.kind in ("cpu", "gpu", "soc", "npu"), d.id
        assert d.memory_bytes > 0 and d.bandwidth_Bps > 0, d.id
        assert 1e9 <= d.bandwidth_Bps <= 1e13, d.id  # 1 GB/s .. 10 TB/s
        assert 2**30 <= d.memory_bytes <= 2**40, d.id
        assert "fp32" in d.peak_flops and set(d.peak_flops) <= set(DTYPES), d.id
        assert set(d.engines) >= set(d.peak_flops), f"{d.id}: every peak needs its engine"
        assert d.provenance.kind in ("theoretical", "measured"), d.id
        assert re.fullmatch(r"\d{4}-\d{2}(-\d{2})?", d.provenance.date), d.id
        assert d.provenance.source and d.provenance.notes, d.id
        if d.tdp_w is not None:
            assert 1 <= d.tdp_w <= 1500, d.id


def test_memory_bytes_are_integers():
    for e in _raw_entries():
        assert isinstance(e["memory_bytes"], int), e["id"]


def test_ridge_points_in_sane_range(builtin):
    for d in builtin.values():
        for dtype in d.peak_flops:
            ridge = d.ridge(dtype)
            assert 0.5 <= ridge <= 2000, f"{d.id} {dtype}: ridge {ridge:.2f} FLOP/B"


def test_low_precision_peaks_not_below_fp32(builtin):
    for d in builtin.values():
        for dtype in ("fp16", "bf16", "fp8", "int8", "int4"):
            if dtype in d.peak_flops:
                assert d.peak_flops[dtype] >= d.peak_flops["fp32"] * 0.99, f"{d.id} {dtype}"


def _measured_pairs(devices):
    pairs = []
    for d in devices.values():
        if d.provenance.kind != "measured":
            continue
        base = re.sub(r"-rb-measured$|-measured$", "", d.id)
        if base != d.id and base in devices:
            pairs.append((d, devices[base]))
    return pairs


def test_measured_roofs_below_theoretical(builtin):
    pairs = _measured_pairs(builtin)
    assert len(pairs) >= 5
    for meas, theo in pairs:
        assert theo.provenance.kind == "theoretical", theo.id
        assert meas.bandwidth_Bps <= theo.bandwidth_Bps, (meas.id, theo.id)
        for dtype, value in meas.peak_flops.items():
            if dtype in theo.peak_flops:
                assert value <= theo.peak_flops[dtype], (meas.id, dtype)
        assert meas.memory_bytes == theo.memory_bytes, (meas.id, theo.id)


def test_rooflinebench_measured_entries(builtin):
    rb = {i: d for i, d in builtin.items() if i.endswith("-rb-measured")}
    assert len(rb) == 5
    for d in rb.values():
        assert d.provenance.kind == "measured"
        assert d.provenance.source == RB_SOURCE
    # section 9 table: measured ridges (fp32) as RooflineBench plotted them
    expected = {"rtx-3090-rb-measured": 43.36, "rtx-3070-ti-laptop-rb-measured": 43.18,
                "jetson-orin-nano-super-8g-rb-measured": 22.56, "raspberry-pi-5-rb-measured": 20.13,
                "apple-m1-pro-rb-measured": 35.83}
    for i, ridge in expected.items():
        assert rb[i].ridge("fp32") == pytest.approx(ridge, abs=0.01), i
    # the Pi's 1.48 GFLOP/s "fp16 peak" is a torch artifact: kept out of the roofs, explained in notes
    pi = rb["raspberry-pi-5-rb-measured"]
    assert "fp16" not in pi.peak_flops and "bf16" not in pi.peak_flops
    assert "1.48" in pi.provenance.notes and "artifact" in pi.provenance.notes


def test_reference_numbers(builtin):
    """Spot checks against roofline.md sections 8-9 and environment.md."""
    d = builtin
    assert d["rtx-3090"].ridge("fp32") == pytest.approx(38.0, abs=0.05)
    assert d["rtx-3090"].ridge("bf16") == pytest.approx(76, abs=0.5)
    assert d["raspberry-pi-5"].ridge("fp32") == pytest.approx(8.98, abs=0.01)
    assert d["apple-m1-pro"].ridge("fp32") == pytest.approx(25.39, abs=0.01)
    assert d["jetson-orin-nano-super-8g"].ridge("fp32") == pytest.approx(20.48, abs=0.01)
    assert d["rtx-3070-ti-laptop"].ridge("fp32") == pytest.approx(37.05, abs=0.01)
    assert d["a100-40g"].bandwidth_Bps == 1555e9 and d["a100-80g"].bandwidth_Bps == 2039e9
    assert "MAXN SUPER" in d["jetson-orin-nano-super-8g"].provenance.notes + d["jetson-orin-nano-super-8g"].name

    epyc = d["epyc-zen4-2vcpu"]
    assert epyc.provenance.kind == "measured" and epyc.provenance.date.startswith("2026-11")
    assert epyc.threads == 2 and epyc.memory_bytes == 24 * 2**30
    assert epyc.ridge("fp32") == pytest.approx(5.7, abs=0.3)
    assert epyc.ridge("bf16") == pytest.approx(12.5, abs=0.5)
    assert epyc.ridge("int8") == pytest.approx(26, abs=1.5)
    assert "fp16" not in epyc.peak_flops  # fp16 matmul is a 2-3 GFLOP/s trap on that machine


def test_no_sparse_tensor_numbers(builtin):
    """Dense peaks only: datacenter tensor rates must match the dense datasheet values."""
    assert builtin["h100-sxm"].peak_flops["bf16"] == pytest.approx(989.4e12, rel=0.01)
    assert builtin["h200"].peak_flops["fp8"] == pytest.approx(1978.9e12, rel=0.01)
    assert builtin["a100-80g"].peak_flops["bf16"] == pytest.approx(312e12, rel=0.01)
    assert builtin["rtx-4090"].peak_flops["bf16"] == pytest.approx(165.2e12, rel=0.01)
