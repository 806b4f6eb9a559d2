import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from arena.errors import ConfigError, ModelError, ParityError
from arena.export.cli import app, parse_shapes, run_export
from arena.export.parity import ParityBatch, Tolerance, compare
from tests.conftest import TRAIN_CSV


def test_export_writes_checked_artifacts_and_manifest(tiny_export, tiny_checkpoint):
    manifest = json.loads((tiny_export / "manifest.json").read_text())
    assert set(manifest["artifacts"]) == {"fp32", "int8"}
    fp32 = manifest["artifacts"]["fp32"]["parity"]
    assert fp32["passed"]
    shapes = {(s["batch"], s["sequence"]) for s in fp32["shapes"]}
    assert {(1, 17), (7, 64), (16, 128)} <= shapes  # shorter and longer than the traced 2x64 example
    assert all(s["max_logit_diff"] <= 1e-4 and s["argmax_agreement"] == 1.0 for s in fp32["shapes"])
    assert all(s["log_loss_change"] is not None for s in fp32["shapes"])  # labelled real rows
    assert manifest["onnx"]["opset"] >= 17
    assert [i["name"] for i in manifest["onnx"]["inputs"]] == ["input_ids", "attention_mask"]
    assert manifest["encoder"]["max_length"] == 128 and manifest["max_length"] == 128
    for key in ("torch", "transformers", "onnx", "onnxruntime"):
        assert manifest["versions"][key]
    from arena.io import sha256_file

    for name, digest in manifest["files"].items():
        assert sha256_file(tiny_export / name) == digest
    assert manifest["tensorrt"]["status"] == "not requested"


def test_onnx_graph_has_dynamic_axes_and_only_real_inputs(tiny_export):
    import onnx

    graph = onnx.load(str(tiny_export / "model.onnx")).graph
    names = [i.name for i in graph.input]
    assert names == ["input_ids", "attention_mask"]  # DeBERTa-v3: no token_type_ids
    dims = [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "sequence"]


def test_onnx_matches_torch_at_unseen_lengths(tiny_export, tiny_checkpoint):
    from arena.serving.backends.onnx import OnnxBackend
    from arena.serving.backends.torch import TorchBackend

    torch_b, onnx_b = TorchBackend(tiny_checkpoint, device="cpu"), OnnxBackend(tiny_export / "model.onnx")
    rng = np.random.default_rng(0)
    for b, s in ((3, 9), (5, 127)):
        ids = rng.integers(5, 120000, size=(b, s))
        mask = np.ones_like(ids)
        mask[0, s // 2:] = 0
        assert np.abs(torch_b(ids, mask) - onnx_b(ids, mask)).max() < 1e-4


def test_parity_failure_keeps_nothing(tmp_path, tiny_checkpoint):
    out = tmp_path / "bad"
    with pytest.raises(ParityError) as err:
        run_export(tiny_checkpoint, out, int8=True, data=str(TRAIN_CSV), parity_shapes="2x32",
                   int8_prob_tol=1e-12)  # an impossible tolerance for INT8
    assert "int8" in str(err.value) and "prob diff" in str(err.value)
    assert not out.exists()
    assert not list(tmp_path.glob(".bad*"))  # no temporary folder left either


def test_compare_judges_each_limit():
    ids = np.ones((4, 8), dtype=np.int64)
    ref = lambda i, m, f: np.tile([[2.0, 0.0, 0.0]], (len(i), 1))  # noqa: E731
    flip = lambda i, m, f: np.tile([[0.0, 2.0, 0.0]], (len(i), 1))  # noqa: E731
    report = compare("x", ref, flip, [ParityBatch(ids, ids, np.zeros(4, dtype=int))], Tolerance.fp16())
    assert not report.passed
    assert any("argmax agreement" in f for f in report.failures)
    assert any("log loss change" in f for f in report.failures)
    ok = compare("x", ref, ref, [ParityBatch(ids, ids)], Tolerance.fp32())
    assert ok.passed and ok.shapes[0].max_logit_diff == 0.0


def test_existing_output_folder_is_refused(tmp_path, tiny_checkpoint):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="already exists"):
        run_export(tiny_checkpoint, out, data=str(TRAIN_CSV))
    assert (out / "notes.txt").read_text() == "keep me"


def test_missing_or_incomplete_checkpoint(tmp_path, tiny_checkpoint):
    with pytest.raises(ModelError, match="does not exist"):
        run_export(tmp_path / "nope", tmp_path / "o")
    partial = tmp_path / "partial"
    shutil.copytree(tiny_checkpoint, partial)
    (partial / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="incomplete"):
        run_export(partial, tmp_path / "o")


def test_two_label_head_is_refused(tmp_path, tiny_config):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    cfg = AutoConfig.from_pretrained(str(tiny_config), num_labels=2)
    folder = tmp_path / "binary"
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(folder)
    with pytest.raises(ModelError, match="2-label head"):
        run_export(folder, tmp_path / "o")


def test_unwritable_output(tmp_path, tiny_checkpoint):
    import os

    if os.geteuid() == 0:
        target = "/proc/arena-cannot-write-here"
    else:  # pragma: no cover
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = str(ro / "out")
    with pytest.raises(ConfigError, match="cannot write"):
        run_export(tiny_checkpoint, target, data=str(TRAIN_CSV), parity_shapes="1x17")


def test_corrupt_onnx_file_gives_a_clear_error(tmp_path, tiny_export):
    from arena.serving.backends.onnx import OnnxBackend

    broken = tmp_path / "model.onnx"
    broken.write_bytes((tiny_export / "model.onnx").read_bytes()[:5000])
    with pytest.raises(ModelError, match="truncated|cannot load"):
        OnnxBackend(broken)


def test_external_data_outside_the_folder_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from arena.artifacts import check_onnx_file

    weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    weight.ClearField("float_data")
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [weight])
    path = tmp_path / "evil.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ModelError, match="outside the model folder"):
        check_onnx_file(path)


def _external(name, location):
    from onnx import TensorProto, helper

    tensor = helper.make_tensor(name, TensorProto.FLOAT, [1], [1.0])
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    tensor.ClearField("float_data")
    return tensor


def test_external_data_is_found_wherever_onnx_nests_a_tensor(tmp_path):
    """The wire-format reader (no ``onnx`` import when serving) finds external data in a Constant's attribute and
    inside an If's subgraph, not only in initializers, and lists what ``onnx`` itself lists."""
    import onnx
    from onnx import TensorProto, helper
    from onnx.external_data_helper import _get_all_tensors

    from arena.artifacts import check_onnx_file, external_data_files, external_data_locations

    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    inner = helper.make_graph([helper.make_node("Constant", [], ["y"], value=_external("deep", "../../escape.bin"))],
                              "then", [], [out])
    nodes = [helper.make_node("Constant", [], ["c"], value=_external("const", "weights/c.bin")),
             helper.make_node("If", ["cond"], ["y"], then_branch=inner, else_branch=inner)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])], [out],
                              [_external("w", "weights/w.bin")])
    path = tmp_path / "nested.onnx"
    onnx.save(helper.make_model(graph), str(path))
    proto = onnx.load(str(path), load_external_data=False)
    want = [(t.name, e.value) for t in _get_all_tensors(proto) for e in t.external_data if e.key == "location"]
    assert sorted(external_data_locations(path)) == sorted(want)
    assert ("deep", "../../escape.bin") in want and len(want) == 4  # the If's two branches share one subgraph
    assert sorted(external_data_files(path)) == ["../../escape.bin", "weights/c.bin", "weights/w.bin"]
    with pytest.raises(ModelError, match="'deep'.*outside the model folder"):
        check_onnx_file(path)


def test_openvino_refuses_external_data_outside_the_folder(tmp_path):
    pytest.importorskip("openvino")
    import onnx
    from onnx import TensorProto, helper

    from arena.serving.backends.openvino import OpenVinoBackend

    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                              [_external("w", "../outside.bin")])
    (tmp_path / "m").mkdir()
    onnx.save(helper.make_model(graph), str(tmp_path / "m" / "model.onnx"))
    with pytest.raises(ModelError, match="outside the model folder"):
        OpenVinoBackend(tmp_path / "m" / "model.onnx", precision="fp32", cache_dir=None)


def test_cli_reports_json_and_trt_without_tensorrt_says_what_is_missing(tmp_path, tiny_checkpoint):
    runner = CliRunner()
    result = runner.invoke(app, [str(tiny_checkpoint), "--out", str(tmp_path / "e"), "--trt"])
    assert result.exit_code == 2
    assert "tensorrt" in result.output.lower() and "arena-toolkit[gpu]" in result.output
    assert not (tmp_path / "e").exists()


def test_parse_shapes_adds_the_longest_length():
    assert parse_shapes("1x17,7x133,16x512", 256) == [(1, 17), (7, 133), (16, 256)]
    assert parse_shapes("1x17", 64)[-1] == (2, 64)
    with pytest.raises(ConfigError):
        parse_shapes("bad", 64)


def test_argmax_agreement_counts_only_decided_rows():
    """A near-uniform model: flips on rows whose reference top-2 margin is within the tolerance are allowed, a
    flip on a decided row is not, and the log-loss limit still covers every row."""
    ids = np.ones((4, 8), dtype=np.int64)
    tied = np.array([[0.02, 0.0, -1.0], [0.0, 0.01, -1.0], [0.01, 0.0, -1.0], [3.0, 0.0, 0.0]])
    nudged = tied[:, [1, 0, 2]].copy()
    nudged[3] = tied[3]  # the decided row keeps its argmax; the three tied rows flip by a tiny change
    labels = np.array([0, 1, 2, 0])
    batch = ParityBatch(ids, ids, labels)
    report = compare("int8", lambda i, m, f: tied, lambda i, m, f: nudged, [batch], Tolerance.int8())
    shape = report.shapes[0]
    assert shape.argmax_agreement == 0.25 and shape.decided_rows == 1 and shape.decided_agreement == 1.0
    assert report.passed, report.failures
    assert "(1.000 on 1 decided rows)" in report.lines()[0]
    flipped = nudged.copy()
    flipped[3] = [0.0, 3.0, 0.0]  # a confident row changes its answer
    report = compare("int8", lambda i, m, f: tied, lambda i, m, f: flipped, [batch], Tolerance.int8())
    assert not report.passed
    assert any("argmax agreement 0.000 over the 1 rows whose reference top-2 margin exceeds 0.1" in f
               for f in report.failures)
    assert any("log loss change" in f for f in report.failures)  # and the limit on every row still applies
