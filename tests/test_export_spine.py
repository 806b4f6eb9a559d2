"""One export spine (issue 22): one configuration written into the manifest, one tensor spec checked before the
parity gate compares numbers, one derived-artefact builder whose TensorRT step is called with the real builder's
signature on both paths, one ``--parity-shapes`` parser."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from arena.artifacts import (
    ATTENTION_MASK,
    FEATURES,
    INPUT_IDS,
    INPUT_SPECS,
    TOKEN_INPUTS,
    TOKEN_TYPE_IDS,
    check_graph_io,
    export_inputs,
    feed_arrays,
    io_manifest,
)
from arena.errors import ConfigError, ParityError, TensorSpecError
from arena.export.config import ExportConfig
from arena.export.parity import ParityBatch, ParityGate, Tolerance, parse_shapes
from tests.conftest import TEST_CSV, TRAIN_CSV

# ------------------------------------------------------------------------------------------------- configuration


def test_export_config_round_trips_through_the_manifest_and_old_manifests_have_none():
    config = ExportConfig(data="train.csv", int8=True, trt=True, opset=18, fp16_prob_tol=0.03, max_tokens=4096)
    assert ExportConfig.from_manifest({"export_config": json.loads(json.dumps(config.to_dict()))}) == config
    assert config.fp16_onnx and not config.fp16  # --trt builds from the FP16 graph without rewriting --fp16
    assert config.fp16_tolerance().max_prob_diff == 0.03 and config.traced_opset == 18
    assert ExportConfig().traced_opset == 17 and ExportConfig().traced_exporter == "torchscript"
    assert ExportConfig.from_manifest({"format_version": 1, "artifacts": {}}) is None  # written before the field
    assert ExportConfig.from_dict({"int8": True, "a_later_option": 1}) == ExportConfig(int8=True)
    with pytest.raises(dataclasses.FrozenInstanceError):  # filled once from the CLI
        config.int8 = False  # type: ignore[misc]


def test_the_manifest_records_the_configuration_and_a_manifest_without_it_still_loads(tmp_path, tiny_export):
    from arena.artifacts import read_manifest
    from arena.infer.cli import run_infer

    manifest = read_manifest(tiny_export)
    recorded = ExportConfig.from_manifest(manifest)
    from tests.conftest import TINY_INT8_LOG_LOSS_TOL

    assert recorded == ExportConfig(int8=True, data=str(TRAIN_CSV), parity_shapes="1x17,7x64,16x128",
                                    int8_log_loss_tol=TINY_INT8_LOG_LOSS_TOL)
    old = tmp_path / "old"
    shutil.copytree(tiny_export, old)
    del manifest["export_config"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    a = run_infer(TEST_CSV, old, tmp_path / "old.csv", precision="fp32")
    b = run_infer(TEST_CSV, tiny_export, tmp_path / "new.csv", precision="fp32")
    assert a["rows"] == b["rows"] == 3
    assert (tmp_path / "old.csv").read_text() == (tmp_path / "new.csv").read_text()


# ------------------------------------------------------------------------------------------------- tensor spec


def _graph(path, *, ids_type=TensorProto.INT64, seq="sequence", labels=3, inputs=TOKEN_INPUTS):
    """A graph that declares the given IO (the constant logits are never run)."""
    declared = [helper.make_tensor_value_info(n, ids_type if n == INPUT_IDS else TensorProto.INT64, ["batch", seq])
                for n in inputs]
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2, labels], [0.5] * (2 * labels))
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", labels])
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["logits"])], "g", declared, [logits], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return onnx.load(str(path)).graph


@pytest.mark.parametrize(("kind", "says"), [
    ("fixed sequence", "axis 1 (sequence) is fixed at 16"),
    ("int32 ids", "input input_ids must be int64"),
    ("two labels", "has 2 entries, arena reads 3"),
    ("position ids", "position_ids, which arena cannot fill"),
    ("no mask", "missing: attention_mask"),
])
def test_structural_check_names_what_differs_from_the_spec(tmp_path, kind, says):
    path = tmp_path / "m.onnx"
    graph = {"fixed sequence": lambda: _graph(path, seq=16), "int32 ids": lambda: _graph(path, ids_type=6),
             "two labels": lambda: _graph(path, labels=2),
             "position ids": lambda: _graph(path, inputs=(*TOKEN_INPUTS, "position_ids")),
             "no mask": lambda: _graph(path, inputs=(INPUT_IDS,))}[kind]()
    with pytest.raises(TensorSpecError, match=re.escape(says)):
        check_graph_io(path, graph)
    assert check_graph_io(path, _graph(tmp_path / "ok.onnx")) == TOKEN_INPUTS


def test_a_derived_model_that_breaks_the_spec_is_refused_before_the_gate_runs_anything(tmp_path):
    from arena.export.derive import check_onnx_artifact

    def reference(*_):
        raise AssertionError("the parity gate ran before the structural check")

    ids = np.ones((2, 16), dtype=np.int64)
    gate = ParityGate(reference, [ParityBatch(ids, ids)])
    _graph(tmp_path / "fixed.onnx", seq=16)
    with pytest.raises(TensorSpecError, match="fixed at 16"):
        check_onnx_artifact(gate, "fp16", tmp_path / "fixed.onnx", Tolerance.fp16(), TOKEN_INPUTS)
    _graph(tmp_path / "plain.onnx")
    with pytest.raises(TensorSpecError, match="its source input_ids, attention_mask, features"):
        check_onnx_artifact(gate, "int8", tmp_path / "plain.onnx", Tolerance.int8(), (*TOKEN_INPUTS, FEATURES))
    assert gate.reports == {}


def test_every_model_of_a_real_export_matches_the_spec_and_its_manifest(tiny_export):
    from arena.artifacts import read_manifest

    manifest = read_manifest(tiny_export)
    expected = tuple(s.name for s in export_inputs(hybrid=False))
    for entry in manifest["artifacts"].values():
        graph = onnx.load(str(tiny_export / entry["file"]), load_external_data=False).graph
        assert check_graph_io(tiny_export / entry["file"], graph, expected=expected) == expected
        dims = [[d.dim_param for d in i.type.tensor_type.shape.dim] for i in graph.input]
        assert dims == [["batch", "sequence"]] * 2  # the spec's names, dynamic
    spec = io_manifest(expected)
    assert manifest["onnx"]["inputs"] == spec["inputs"] and manifest["onnx"]["outputs"] == spec["outputs"]
    assert spec["outputs"] == [{"name": "logits", "dtype": "float32", "dims": ["batch", 3]}]
    hybrid = io_manifest((*expected, FEATURES), columns=["len_a", "len_b"])["inputs"][-1]
    assert hybrid == {"name": FEATURES, "dtype": "float32", "dims": ["batch", 2], "columns": ["len_a", "len_b"]}


def test_feeds_follow_the_spec_for_every_graph():
    ids = np.arange(12).reshape(3, 4) + 5
    mask = np.ones_like(ids)
    feeds = feed_arrays({INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS}, ids, mask)
    assert list(feeds) == [INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS]  # the spec's order
    assert feeds[TOKEN_TYPE_IDS].dtype == np.int64 and feeds[TOKEN_TYPE_IDS].shape == (3, 4)
    assert not feeds[TOKEN_TYPE_IDS].any()  # one segment, as arena-train feeds
    assert list(feed_arrays(list(TOKEN_INPUTS), ids, mask, np.ones((3, 2)))) == list(TOKEN_INPUTS)
    with pytest.raises(ConfigError, match="third input"):
        feed_arrays({*TOKEN_INPUTS, FEATURES}, ids, mask)
    assert {s.name for s in INPUT_SPECS if s.exported} == {INPUT_IDS, ATTENTION_MASK, FEATURES}


# ------------------------------------------------------------------------------------------------- parity shapes


def test_one_parity_shape_parser_for_the_checks_and_the_gate():
    import arena.export.precheck as precheck

    assert parse_shapes("1x17, 7X133,1x17") == [(1, 17), (7, 133)]
    assert parse_shapes("1x17,7x133,16x512", 256) == [(1, 17), (7, 133), (16, 256)]
    for bad in ("2x4", "0x17", "2x", "big"):
        with pytest.raises(ConfigError, match="--parity-shapes"):
            parse_shapes(bad)
    assert not hasattr(precheck, "parity_shape_list")
    with pytest.raises(ConfigError, match="--parity-shapes 2x4"):
        precheck.check_options(ExportConfig(parity_shapes="2x4"), precheck.CHECKPOINT, TRAIN_CSV)


# ------------------------------------------------------------------------------------------------- TensorRT step


@pytest.fixture()
def fake_trt(monkeypatch):
    """A TensorRT builder that checks every call binds to the real builder's signature (the call that was a
    TypeError on the foreign path), runs the parity closure it is given on the FP16 ONNX model, and records it."""
    import arena.export.precheck as precheck
    from arena.export.tensorrt import build_trt_section
    from arena.serving.backends.onnx import OnnxBackend

    monkeypatch.setattr(precheck, "tensorrt_available", lambda: (True, ""))
    calls = []

    def build(*args, **kwargs):
        bound = inspect.signature(build_trt_section).bind(*args, **kwargs).arguments
        report = bound["parity"](OnnxBackend(bound["folder"] / "model.fp16.onnx", device="cpu"))
        calls.append(bound)
        return {"status": "built by the test's builder", "parity_passed": report.passed,
                "max_tokens": bound["max_tokens"]}

    build.calls = calls
    return build


@pytest.mark.parametrize("source", ["foreign", "checkpoint"])
def test_both_paths_call_the_tensorrt_builder_with_its_signature(tmp_path, tiny_checkpoint, fake_trt, source):
    from arena.artifacts import read_manifest
    from arena.export.cli import run_export
    from arena.models.modeling import load_classifier
    from tests.test_foreign import write_optimum_layout

    folder = tiny_checkpoint
    if source == "foreign":
        folder = write_optimum_layout(load_classifier(tiny_checkpoint, require_three_labels=True), tmp_path / "opt")
    out = tmp_path / "export"
    summary = run_export(folder, out, trt=True, data=str(TRAIN_CSV), parity_shapes="1x17,4x64", trt_buckets=3,
                         workspace_gib=2.0, max_tokens=4096, openvino=False, build_trt=fake_trt)
    (call,) = fake_trt.calls
    manifest = read_manifest(out)
    assert call["buckets"] == 3 and call["workspace_gib"] == 2.0 and call["max_tokens"] == 4096
    assert call["max_length"] == manifest["max_length"] and call["model_type"] == "deberta-v2"
    assert call["n_features"] == 0 and len(call["lengths"]) == 256 and call["lengths"].max() <= call["max_length"]
    assert manifest["tensorrt"] == {"status": "built by the test's builder", "parity_passed": True,
                                    "max_tokens": 4096}
    assert summary["parity"]["fp16"] and manifest["export_config"]["resolved"]["fp16_onnx"]
    assert manifest["export_config"]["trt"] and manifest["artifacts"]["fp16"]["parity"]["passed"]


def test_int8_static_is_honoured_for_a_foreign_export(tmp_path, tiny_checkpoint):
    """``--int8-static`` on a foreign export was silently ignored: now the OpenVINO section is built from its
    ``model.onnx`` like any export's, and the static INT8 model is checked against the foreign graph."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from arena.artifacts import read_manifest, verify_files
    from arena.export.cli import run_export
    from arena.models.modeling import load_classifier
    from tests.test_foreign import write_optimum_layout

    folder = write_optimum_layout(load_classifier(tiny_checkpoint, require_three_labels=True), tmp_path / "opt")
    out = tmp_path / "export"
    # The static INT8 model is made from the foreign graph and judged by the gate like any export's. On the
    # informative tiny model NNCF's static INT8 does not pass (as in tests/test_openvino.py, xfail there): the gate
    # refusing it, and keeping nothing, is what shows the flag was honoured, not ignored.
    with pytest.raises(ParityError, match="openvino_int8 parity check failed, nothing was kept"):
        run_export(folder, out, int8_static=True, calibration_rows=16, data=str(TRAIN_CSV),
                   parity_shapes="1x17,4x64")
    assert not out.exists()
    summary = run_export(folder, out, int8_static=True, calibration_rows=16, data=str(TRAIN_CSV),
                         parity_shapes="1x17,4x64", int8_prob_tol=1.0, min_agreement=0.0, int8_log_loss_tol=10.0)
    manifest = read_manifest(out)
    int8 = manifest["openvino"]["precisions"]["int8"]
    assert summary["parity"]["openvino_int8"] and int8["parity"]["passed"] and int8["file"] == "model.int8.xml"
    assert int8["quantized_from"] == "model.onnx" and "relpos_rewrite" not in manifest["openvino"]  # unchanged
    assert not (out / "model.ov.xml").exists()
    assert manifest["export_config"]["int8_static"] and manifest["source"]["kind"] == "foreign_onnx"
    verify_files(out, manifest, ["model.int8.xml", "model.int8.bin"])


def test_int8_static_without_openvino_is_one_line_before_any_work(monkeypatch):
    import arena.export.precheck as precheck
    import arena.serving.backends.openvino as ov_backend

    monkeypatch.setattr(ov_backend, "openvino_available",
                        lambda: (False, "OpenVINO is not installed; pip install 'arena-toolkit[openvino]'"))
    for kind in (precheck.CHECKPOINT, precheck.FOREIGN):
        with pytest.raises(ConfigError, match=r"--int8-static: OpenVINO is not installed.*arena-toolkit\[openvino\]"):
            precheck.check_options(ExportConfig(int8_static=True), kind, TRAIN_CSV)
    precheck.check_options(ExportConfig(int8_static=False), precheck.FOREIGN, TRAIN_CSV)  # nothing asked, no error
