"""The TensorRT code checked against the real API without TensorRT or a GPU.

* mypy type-checks the TensorRT modules against the ``tensorrt-stubs`` wheel (the TensorRT 10.13 Python API as type
  stubs), so a misspelt method, a wrong argument or a wrong type fails here rather than on a user's GPU;
* no API that TensorRT 11 removed (weak typing: precision flags, layer precision hints, INT8 calibrators, ...) is
  referenced anywhere in ``src/``, and the build creates its network strongly typed.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "arena"
TENSORRT_MODULES = ["src/arena/export/tensorrt.py", "src/arena/serving/backends/tensorrt.py",
    "src/arena/machine/gpu.py"]

# NVIDIA, "Migrating from TensorRT 10.x to 11.x", removed Python APIs (attribute names as code spells them).
REMOVED_BUILDER_FLAGS = {"FP16", "BF16", "INT8", "FP8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS",
                         "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO"}
REMOVED_ATTRIBUTES = {
    "int8_calibrator", "set_calibration_profile", "get_calibration_profile", "set_quantization_flag",
    "get_quantization_flag", "clear_quantization_flag", "quantization_flags", "set_output_type", "get_output_type",
    "reset_output_type", "output_type_is_set", "reset_precision", "precision_is_set", "platform_has_fast_fp16",
    "platform_has_fast_int8", "algorithm_selector", "device_memory_size", "IInt8Calibrator",
    "IInt8EntropyCalibrator", "IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator", "IInt8LegacyCalibrator",
    "CalibrationAlgoType", "IAlgorithmSelector", "QuantizationFlag",
}


def removed_api_uses(source: str, where: str = "<string>") -> list[str]:
    """Every reference in ``source`` to an API TensorRT 11 removed: ``BuilderFlag.<precision flag>``, the
    attributes above, and a layer's ``.precision = ...`` (any ``X.precision`` assignment except on ``self``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        line = f"{where}:{node.lineno}"
        if node.attr in REMOVED_ATTRIBUTES:
            found.append(f"{line} .{node.attr}")
        owner = node.value
        if node.attr in REMOVED_BUILDER_FLAGS and isinstance(owner, ast.Attribute) and owner.attr == "BuilderFlag":
            found.append(f"{line} BuilderFlag.{node.attr}")
        if (node.attr == "precision" and isinstance(node.ctx, ast.Store)
                and not (isinstance(owner, ast.Name) and owner.id == "self")):
            found.append(f"{line} layer precision hint (.precision = ...)")
    return found


def test_no_api_removed_in_tensorrt_11_is_referenced_in_src():
    found = [hit for path in sorted(SRC.rglob("*.py"))
             for hit in removed_api_uses(path.read_text(), str(path.relative_to(ROOT)))]
    assert found == [], "APIs removed in TensorRT 11:\n" + "\n".join(found)


def test_the_removed_api_scan_catches_the_weakly_typed_build():
    """The build this issue replaced, as it was: every removed API in it is found."""
    old = """
config.set_flag(trt.BuilderFlag.FP16)
config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
layer.precision = trt.float32
layer.set_output_type(0, trt.float32)
config.int8_calibrator = calibrator
self.precision = "fp16"
"""
    hits = sorted(h.split(" ", 1)[1] for h in removed_api_uses(old))
    assert hits == sorted(["BuilderFlag.FP16", "BuilderFlag.OBEY_PRECISION_CONSTRAINTS", ".set_output_type",
                           "layer precision hint (.precision = ...)", ".int8_calibrator"])


def test_the_network_is_created_strongly_typed():
    tree = ast.parse((SRC / "export" / "tensorrt.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr == "create_network"]
    assert len(calls) == 1 and calls[0].args, "build_engine must create exactly one network, with flags"
    flags = ast.unparse(calls[0].args[0])
    assert "NetworkDefinitionCreationFlag.STRONGLY_TYPED" in flags


# --------------------------------------------------------------------------------------------- mypy vs. stubs

_KEYWORD_PARAM = re.compile(r"(?<=[(,\s])(in|lambda|from|def|class|is|not|and|or)(?=:)")


def _split_params(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [*parts, current] if current.strip() else parts


def _repair_def(line: str) -> str:
    """Make one generated ``def`` line valid Python: parameters named after keywords are renamed, and a parameter
    without a default after one with a default gets ``= ...``."""
    line = _KEYWORD_PARAM.sub(lambda m: m.group(1) + "_", line)
    head, sep, rest = line.partition("(")
    params, close, tail = rest.rpartition(")")
    fixed, seen_default = [], False
    for p in _split_params(params):
        bare = p.strip()
        if "=" in bare:
            seen_default = True
        elif seen_default and bare and not bare.startswith("*"):
            p = p + " = ..."
        fixed.append(p)
    return head + sep + ",".join(fixed) + close + tail


def repaired_stubs(site: Path, dest: Path) -> Path:
    """Copy the stub packages to ``dest`` and repair the few lines pybind11-stubgen wrote that are not valid Python
    (tensorrt-stubs 10.13.0.35.1: parameters named ``in`` in plugin interfaces, one default-order error)."""
    for name in ("tensorrt", "tensorrt_bindings"):
        shutil.copytree(site / name, dest / name)
    (dest / "tensorrt_libs").mkdir()
    (dest / "tensorrt_libs" / "__init__.pyi").write_text("")
    for stub in dest.rglob("*.pyi"):
        lines = stub.read_text().splitlines()
        for _ in range(200):
            try:
                ast.parse("\n".join(lines))
                break
            except SyntaxError as exc:
                k = (exc.lineno or 1) - 1
                repaired = _repair_def(lines[k])
                if repaired == lines[k]:
                    raise
                lines[k] = repaired
        stub.write_text("\n".join(lines) + "\n")
    return dest


@pytest.fixture(scope="module")
def stub_path(tmp_path_factory) -> Path:
    spec = importlib.util.find_spec("tensorrt_stubs")
    if spec is None or spec.origin is None:
        pytest.skip("the tensorrt-stubs wheel is not installed (make install puts it in the dev environment)")
    site = Path(spec.origin).parent.parent
    return repaired_stubs(site, tmp_path_factory.mktemp("trt-stubs"))


def run_mypy(stubs: Path, files: list[str], tmp: Path) -> tuple[int, str]:
    api = pytest.importorskip("mypy.api", reason="mypy is not installed (it is in the dev extras)")
    config = tmp / "mypy.ini"
    config.write_text(f"""[mypy]
mypy_path = {stubs}
python_version = 3.11
follow_imports = silent
check_untyped_defs = True
warn_unused_ignores = True
no_site_packages = False
cache_dir = {tmp / '.mypy_cache'}

[mypy-tensorrt.*,tensorrt_bindings.*,tensorrt_libs.*]
ignore_errors = True

[mypy-arena.export.tensorrt,arena.serving.backends.tensorrt,arena.machine.gpu]
disallow_untyped_defs = True

[mypy-torch.*,transformers.*,onnx.*,onnxruntime.*,pandas.*,tokenizers.*,sentencepiece.*,safetensors.*]
follow_imports = skip
ignore_missing_imports = True
""")
    out, err, status = api.run(["--config-file", str(config), *files])
    return status, out + err


def test_tensorrt_modules_type_check_against_the_real_api(stub_path, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    status, report = run_mypy(stub_path, TENSORRT_MODULES, tmp_path)
    assert status == 0, report


def test_the_type_check_catches_a_misspelt_tensorrt_call(stub_path, tmp_path):
    """Control: with the stubs in effect, calls that do not exist in the TensorRT API are errors, not Any."""
    bad = tmp_path / "bad_trt.py"
    bad.write_text("""import tensorrt as trt


def build(engine: trt.ICudaEngine, context: trt.IExecutionContext) -> None:
    engine.get_tensor_profile_shapes("input_ids", 0)
    context.execute_async_v3()
    trt.Builder(trt.Logger(trt.Logger.WARNING)).create_network("strongly typed")
""")
    status, report = run_mypy(stub_path, [str(bad)], tmp_path)
    assert status == 1
    assert 'has no attribute "get_tensor_profile_shapes"' in report
    assert "execute_async_v3" in report and "create_network" in report
