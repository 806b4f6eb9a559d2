import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from arena.bench.cli import app
from arena.bench.data_report import app as report_app
from arena.bench.data_report import summarize
from arena.bench.runner import CellResult, check_thresholds, compute_speedups, repeat_to, rule_min
from tests.conftest import TOKENIZER, TRAIN_CSV


def test_bench_runs_a_matrix_and_writes_every_report(tmp_path, tiny_checkpoint, tiny_export):
    out = tmp_path / "bench"
    result = CliRunner().invoke(app, [
        "--model", str(tiny_checkpoint), "--export", str(tiny_export), "--data", str(TRAIN_CSV), "--rows", "40",
        "--cells", "torch:fp32/notebook,torch:fp32/sorted,onnx:fp32/sorted,onnx:int8/padded", "--repeats", "2",
        "--warmup", "0", "--max-length", "512", "--out", str(out)])
    assert result.exit_code == 0, result.output
    final = json.loads(result.output.strip().splitlines()[-1])
    assert set(final["cells"]) == {"torch:fp32/notebook", "torch:fp32/sorted", "onnx:fp32/sorted",
                                   "onnx:int8/padded"}
    assert final["speedups"]["torch:fp32/notebook"] == 1.0 and final["ok"] is True
    for name in ("bench.md", "bench.json", "bench.html", "bench.png"):
        assert (out / name).stat().st_size > 0
    data = json.loads((out / "bench.json").read_text())
    cells = {c["name"]: c for c in data["cells"]}
    assert cells["onnx:int8/padded"]["padding_efficiency"] < cells["onnx:fp32/sorted"]["padding_efficiency"]
    assert all(c["rows"] == 40 and c["batch_ms_p50"] > 0 and c["peak_rss_mib"] > 0 for c in data["cells"])
    assert "| torch:fp32/notebook |" in (out / "bench.md").read_text()
    for c in data["cells"]:
        # one pass gives both numbers: the time inside the model is part of the pass's wall time
        assert len(c["e2e_runs_s"]) == len(c["model_runs_s"]) == 2
        assert all(m <= e for m, e in zip(c["model_runs_s"], c["e2e_runs_s"], strict=True))
        assert c["model_rows_per_s"] >= c["rows_per_s"]
        assert c["rows_per_s_min"] <= c["rows_per_s"] <= c["rows_per_s_max"]
        assert c["e2e_s"] == sorted(c["e2e_runs_s"])[0]  # the median of two passes is the lower one


def test_bench_interleaves_repeats_across_cells(monkeypatch, tiny_checkpoint, tiny_export, train_records):
    from arena.bench import runner

    order = []
    real = runner.time_pass
    monkeypatch.setattr(runner, "time_pass", lambda cell, rows: order.append(cell.spec.name) or real(cell, rows))
    specs = [runner.CellSpec.parse("torch:fp32", "sorted"), runner.CellSpec.parse("onnx:fp32", "sorted")]
    cells = [runner.open_cell(s, tiny_checkpoint if s.backend == "torch" else tiny_export, batch_size=64,
                              max_tokens=None, threads=None, max_length=None) for s in specs]
    results = runner.run_cells(cells, train_records[:8], repeats=3, warmup=1)
    names = [s.name for s in specs]
    assert order == names + names * 3  # warm-up of each, then repeat 1 of every cell, repeat 2, ...
    assert [r.name for r in results] == names


def test_check_mode_fails_below_threshold(tmp_path, tiny_checkpoint, tiny_export):
    thresholds = tmp_path / "t.json"
    thresholds.write_text(json.dumps({"ratios": [
        {"name": "impossible", "numerator": "onnx:fp32/sorted", "denominator": "onnx:fp32/sorted", "min": 2.0}]}))
    result = CliRunner().invoke(app, [
        "--model", str(tiny_checkpoint), "--export", str(tiny_export), "--data", str(TRAIN_CSV), "--rows", "8",
        "--cells", "onnx:fp32/sorted", "--repeats", "1", "--warmup", "0", "--out", str(tmp_path / "b"),
        "--check", str(thresholds)])
    assert result.exit_code == 5
    assert "impossible (1.00x, needs >= 2.0x, the min for every CPU kind measured)" in result.output
    assert "CPU cores (" in result.output  # the failure names the machine it was measured on


def _cell(name, rps):
    return CellResult(name=name, backend="x", precision="y", policy="z", description="", rows=1, e2e_s=1, model_s=1,
                      rows_per_s=rps, model_rows_per_s=rps, tokens_per_s=1, padding_efficiency=1, batches=1,
                      batch_ms_p50=1, batch_ms_p90=1, batch_ms_p99=1, peak_rss_mib=1, peak_gpu_mib=None, load_s=0)


def test_ratio_checks_and_speedups():
    cells = [_cell("base", 2.0), _cell("fast", 5.0)]
    compute_speedups(cells, "base")
    assert [c.speedup for c in cells] == [1.0, 2.5]
    rules = {"ratios": [{"name": "ok", "numerator": "fast", "denominator": "base", "min": 2.0},
                        {"name": "low", "numerator": "fast", "denominator": "base", "min": 3.0},
                        {"name": "missing", "numerator": "gone", "denominator": "base", "min": 1.0}]}
    result = {c["name"]: c for c in check_thresholds(cells, rules)}
    assert result["ok"]["passed"] and result["ok"]["value"] == pytest.approx(2.5)
    assert not result["low"]["passed"] and not result["missing"]["passed"]


def test_a_ratio_is_raised_only_on_the_cpu_kind_that_was_measured_to_do_better():
    cells = [_cell("fp32", 2.0), _cell("int8", 2.2)]
    zen4 = {"flags_all": ["avx512_vnni", "avx512_bf16"], "flags_none": ["amx_tile"], "min": 1.2, "kind": "Zen 4"}
    rules = {"ratios": [{"name": "int8", "numerator": "int8", "denominator": "fp32", "min": 0.9, "where_cpu": [zen4]}]}
    on = {name: check_thresholds(cells, rules, flags=frozenset(flags))[0] for name, flags in {
        "avx2": {"avx2"}, "zen4": {"avx2", "avx512_vnni", "avx512_bf16"},
        "amx": {"avx2", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8"}}.items()}
    assert on["avx2"]["passed"] and on["avx2"]["min"] == 0.9 and on["avx2"]["min_for"] == "every CPU kind measured"
    assert not on["zen4"]["passed"] and on["zen4"]["min"] == 1.2 and on["zen4"]["min_for"] == "Zen 4"
    assert on["amx"]["passed"] and on["amx"]["min"] == 0.9  # a kind not measured keeps the floor
    assert "where_cpu" not in on["zen4"]


def test_the_shipped_thresholds_hold_on_every_cpu_kind_they_name():
    """Every recorded CPU kind's ratios pass the floor; each where_cpu min is at or below that kind's measurement."""
    rules = json.loads((Path(__file__).parents[1] / "benchmarks" / "thresholds.json").read_text())["ratios"]
    seen = {"avx2": [1.67, 1.31, 1.14, 2.49, 1.10, 0.95], "ci": [2.44, 1.30, 1.01, 3.19, 0.86, 0.97],
            "zen4": [2.65, 1.46, 1.31, 5.06, 1.38, 1.66]}
    zen4_flags = frozenset({"avx2", "avx512_vnni", "avx512_bf16"})
    for rule, avx2, ci, zen4 in zip(rules, *seen.values(), strict=True):
        assert rule["min"] <= min(avx2, ci) * 0.9, rule["name"]  # room for one noisy pass
        assert rule_min(rule, zen4_flags)[0] <= zen4 * 0.9, rule["name"]


def test_repeat_keeps_ids_unique_and_the_length_mix(train_records):
    rows = repeat_to(train_records[:10], 35)
    assert len(rows) == 35 and len({r.id for r in rows}) == 35
    assert rows[10].response_a == rows[0].response_a


def test_data_report_numbers_match_the_data(tmp_path, train_records, tokenizer):
    s = summarize(train_records, tokenizer)
    assert s["class_counts"] == {"a": 534, "b": 505, "tie": 461}
    assert s["multi_turn_share"] == pytest.approx(np.mean([len(r.prompt) > 1 for r in train_records]))
    assert 0.4 < s["truncated_share_by_max_length"]["512"] < 0.6  # about half the real rows exceed 512
    assert s["truncated_share_by_max_length"]["2048"] < s["truncated_share_by_max_length"]["512"]
    out = tmp_path / "rep"
    result = CliRunner().invoke(report_app, [str(TRAIN_CSV), "--out", str(out), "--tokenizer", str(TOKENIZER)])
    assert result.exit_code == 0, result.output
    text = (out / "data.md").read_text()
    assert "a 534 (35.6%)" in text and "| 512 |" in text
    assert (out / "data.png").stat().st_size > 10_000
    assert json.loads((out / "data.json").read_text())["class_counts"]["tie"] == 461


def test_default_matrix_with_only_a_checkpoint_measures_torch_and_says_what_it_skipped(tmp_path, tiny_checkpoint):
    out = tmp_path / "bench"
    result = CliRunner().invoke(app, [
        "--model", str(tiny_checkpoint), "--data", str(TRAIN_CSV), "--rows", "16", "--repeats", "1",
        "--warmup", "0", "--max-length", "128", "--out", str(out)])
    assert result.exit_code == 0, result.output
    final = json.loads(result.output.strip().splitlines()[-1])
    assert set(final["cells"]) == {"torch:fp32/notebook", "torch:fp32/sorted"}
    skipped = json.loads((out / "bench.json").read_text())["skipped"]
    assert {line.split(":")[0] + ":" + line.split(":")[1] for line in skipped} == {
        f"{b}/{p}" for b in ("onnx:fp32", "onnx:int8", "openvino:bf16", "openvino:int8")
        for p in ("notebook", "sorted")}
    assert all("needs --export" in line for line in skipped)
    assert "not measured" in (out / "bench.md").read_text()


def test_listed_cells_must_all_run_and_the_skip_reason_names_the_export_flag(tmp_path, tiny_checkpoint,
                                                                              tiny_export):
    from arena.bench.precheck import parse_cells, runnable_cells
    from arena.errors import ConfigError

    specs = parse_cells(None, "torch:fp32,onnx:fp16,openvino:int8", "sorted")
    keep, skipped = runnable_cells(specs, tiny_export, explicit=False)
    assert [s.name for s in keep] == ["torch:fp32/sorted"]
    assert "arena-export --fp16" in skipped[0] and "--int8-static" in skipped[1]
    with pytest.raises(ConfigError, match="onnx:fp16/sorted"):
        runnable_cells(specs, tiny_export, explicit=True)
    with pytest.raises(ConfigError, match="openvino:int8/sorted"):  # the baseline is never skipped quietly
        runnable_cells(specs[2:], tiny_export, explicit=False, baseline="openvino:int8/sorted")


def test_an_openvino_cell_is_measured_beside_onnx(tmp_path, tiny_checkpoint, tiny_export_int8_static):
    out = tmp_path / "bench"
    result = CliRunner().invoke(app, [
        "--model", str(tiny_checkpoint), "--export", str(tiny_export_int8_static), "--data", str(TRAIN_CSV),
        "--rows", "16", "--cells", "onnx:fp32/sorted,openvino:fp32/sorted,openvino:int8/sorted", "--repeats", "1",
        "--warmup", "0", "--max-length", "128", "--baseline", "onnx:fp32/sorted", "--out", str(out)])
    assert result.exit_code == 0, result.output
    cells = {c["name"]: c for c in json.loads((out / "bench.json").read_text())["cells"]}
    assert cells["openvino:int8/sorted"]["description"].startswith("openvino (model.int8.xml")
    assert "threads" in cells["openvino:fp32/sorted"]["description"]
