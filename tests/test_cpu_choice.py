"""The automatic CPU choice (what the export holds, what passed parity, what this machine runs) and the cores a
process may use. No OpenVINO needed: its presence and the CPU's flags are simulated."""

import pytest

from arena.errors import BackendUnavailable
from arena.serving.choice import choose_variant
from arena.serving.folder import EXPORT, ModelFolder


def _export(tmp_path, ort=("fp32",), ov_passed=(), ov_failed=()):
    """An export folder as its manifest describes it (the choice reads nothing else)."""
    precisions = {p: {"file": "model.onnx", "parity": {"passed": True}} for p in ov_passed}
    precisions.update({p: {"file": "model.onnx", "parity": {"passed": False, "failures": ["x"]}} for p in ov_failed})
    manifest = {"artifacts": {p: {"file": f"model.{p}.onnx"} for p in ort},
                "openvino": {"status": "checked", "precisions": precisions}}
    return ModelFolder(tmp_path, EXPORT, manifest)


def _usable_cpu(folder):
    ranked = sorted((v for v in folder.variants() if v.device == "cpu" and v.usable and v.checked),
                    key=lambda v: -v.speed)
    return [(v.backend, v.precision) for v in ranked]


@pytest.fixture
def zen4(monkeypatch):
    """A CPU with AVX-512 BF16 and VNNI, OpenVINO installed, no GPU."""
    import importlib.util

    import arena.machine.cpu
    import arena.serving.choice

    monkeypatch.setattr(arena.machine.cpu, "cpu_flags", lambda *a: frozenset({"avx512f", "avx512_bf16", "avx512_vnni"}))
    monkeypatch.setattr(arena.serving.choice, "gpu_present", lambda: False)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "openvino" else real(name))
    return monkeypatch


def test_cpu_choice_follows_the_measured_ranking(zen4, tmp_path):
    import arena.machine.cpu

    full = _export(tmp_path, ort=("fp32", "int8"), ov_passed=("fp32", "bf16", "int8"))
    assert _usable_cpu(full) == [("openvino", "int8"), ("openvino", "bf16"), ("onnx", "int8"),
                                 ("openvino", "fp32"), ("onnx", "fp32")]
    c = choose_variant(full)
    assert (c.backend, c.options) == ("openvino", {"precision": "int8"})
    c = choose_variant(_export(tmp_path, ort=("fp32", "int8"), ov_passed=("fp32", "bf16")))
    assert (c.backend, c.options["precision"]) == ("openvino", "bf16")
    assert "passed over: openvino int8 (not exported" in c.reason
    bf16_failed = _export(tmp_path, ort=("fp32", "int8"), ov_passed=("fp32",), ov_failed=("bf16",))
    c = choose_variant(bf16_failed)
    assert (c.backend, c.options["precision"]) == ("onnx", "int8") and "did not pass its parity check" in c.reason
    assert choose_variant(bf16_failed, precision="fp32").backend == "openvino"  # --precision filters the ranking
    zen4.setattr(arena.machine.cpu, "cpu_flags", lambda *a: frozenset({"avx2"}))
    c = choose_variant(_export(tmp_path, ov_passed=("fp32", "bf16")))
    assert (c.backend, c.options["precision"]) == ("openvino", "fp32") and "no native bf16" in c.reason


def test_a_named_backend_runs_its_default_variant(zen4, tmp_path):
    """--backend onnx without --precision is the exact fp32 graph even where int8 is faster; --backend openvino
    runs its fastest checked precision."""
    full = _export(tmp_path, ort=("fp32", "int8"), ov_passed=("fp32", "bf16", "int8"))
    assert choose_variant(full, "onnx").options["precision"] == "fp32"
    assert choose_variant(full, "onnx", "int8").options["precision"] == "int8"
    assert choose_variant(full, "openvino").options["precision"] == "int8"
    with pytest.raises(BackendUnavailable, match="has no model.safetensors for the torch backend"):
        choose_variant(full, "torch")


def test_cpu_choice_without_openvino_or_records(zen4, tmp_path):
    import importlib.util

    legacy = ModelFolder(tmp_path, EXPORT, {"artifacts": {"fp32": {"file": "model.onnx"},
                                                          "int8": {"file": "model.int8.onnx"}}})
    c = choose_variant(legacy)  # an export made before OpenVINO was checked: ONNX Runtime, as before
    assert (c.backend, c.options["precision"]) == ("onnx", "int8") and "no parity record for OpenVINO" in c.reason
    zen4.setattr(importlib.util, "find_spec", lambda name, *a: None)
    c = choose_variant(_export(tmp_path, ov_passed=("fp32", "bf16", "int8")))
    assert (c.backend, c.options["precision"]) == ("onnx", "fp32") and "OpenVINO is not installed" in c.reason
    with pytest.raises(BackendUnavailable, match="no CPU backend can run fp16"):
        choose_variant(_export(tmp_path), precision="fp16")


def test_cgroup_quota_caps_the_cores(tmp_path, monkeypatch):
    import arena.machine.cpu
    from arena.machine.cpu import allowed_cores, cgroup_cpu_limit

    v2 = tmp_path / "cpu.max"
    v1 = (tmp_path / "quota", tmp_path / "period")
    v2.write_text("150000 100000\n")
    assert cgroup_cpu_limit(v2, v1) == 1.5
    v2.write_text("max 100000\n")
    assert cgroup_cpu_limit(v2, v1) is None
    v2.unlink()
    v1[0].write_text("200000\n")
    v1[1].write_text("100000\n")
    assert cgroup_cpu_limit(v2, v1) == 2.0
    v1[0].write_text("-1\n")
    assert cgroup_cpu_limit(v2, v1) is None
    monkeypatch.setattr(arena.machine.cpu.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(arena.machine.cpu, "cgroup_cpu_limit", lambda: 2.5)
    assert allowed_cores() == 3  # a quota of 2.5 CPUs: 3 threads, not 8
    monkeypatch.setattr(arena.machine.cpu, "cgroup_cpu_limit", lambda: None)
    assert allowed_cores() == 8
    monkeypatch.setattr(arena.machine.cpu.os, "sched_getaffinity", lambda pid: {3})
    assert allowed_cores() == 1


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    from arena.machine.cpu import cpu_flags, cpu_model_name, has_int8_dot, has_native_bf16

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n")
    flags = cpu_flags(info)
    assert has_native_bf16(flags) and has_int8_dot(flags) and cpu_model_name(info) == "AMD EPYC 9R14"
    assert not has_native_bf16(frozenset({"avx2", "avx512f"})) and not has_int8_dot(frozenset({"avx2"}))
    assert cpu_flags(tmp_path / "missing") == frozenset()
