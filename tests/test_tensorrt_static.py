"""The TensorRT code checked against the real TensorRT 11.4 API without TensorRT or a GPU.

* mypy type-checks the TensorRT modules against stubs generated from NVIDIA's real 11.4 Python module
  (:mod:`tests.tensorrt_api`: the ``tensorrt-cu13-bindings`` wheel imported over stub libraries), so a misspelt
  method, a wrong argument, a removed enum member or a wrong type fails here rather than on a user's GPU;
* no API that TensorRT 11 removed (weak typing: precision flags, layer precision hints, INT8 calibrators, ...) is
  referenced anywhere in ``src/``, typed or not (mypy sees only annotated TensorRT objects in three modules), the
  list of removed names is checked against the 11.4 module itself, and the build creates its network strongly typed.
"""

from __future__ import annotations

import ast
import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import tensorrt_api

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "arena"
TENSORRT_MODULES = ["src/arena/export/tensorrt.py", "src/arena/serving/backends/tensorrt.py",
    "src/arena/machine/gpu.py"]

# NVIDIA, "Migrating from TensorRT 10.x to 11.x", removed Python APIs (attribute names as code spells them).
# DIRECT_IO and ILayer.get_output_type are still in 11.4 (test_the_removed_api_list_matches_tensorrt_11_4).
REMOVED_BUILDER_FLAGS = {"FP16", "BF16", "INT8", "FP8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS",
                         "PREFER_PRECISION_CONSTRAINTS"}
REMOVED_ATTRIBUTES = {
    "int8_calibrator", "set_calibration_profile", "get_calibration_profile", "set_quantization_flag",
    "get_quantization_flag", "clear_quantization_flag", "quantization_flags", "set_output_type", "reset_output_type",
    "output_type_is_set", "reset_precision", "precision_is_set", "platform_has_fast_fp16",
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


# ----------------------------------------------------------------------------- the real 11.4 API, as stubs


@pytest.fixture(scope="session")
def trt_build(tmp_path_factory) -> Path:
    """The work folder of :func:`tests.tensorrt_api.build_stubs` (stub libraries, unpacked wheel, stubs)."""
    if importlib.util.find_spec("pybind11_stubgen") is None:
        pytest.skip("pybind11-stubgen is not installed (it is in the dev extras: pip install -e '.[dev]')")
    work = tmp_path_factory.mktemp("trt-11.4")
    try:
        tensorrt_api.build_stubs(work)
    except tensorrt_api.Unavailable as exc:
        pytest.skip(f"the TensorRT 11.4 stubs cannot be built here: {exc}")
    return work


@pytest.fixture(scope="session")
def stub_path(trt_build) -> Path:
    return trt_build / "stubs"


def stub_api(stubs: Path) -> dict[str, set[str]]:
    """Every class of the generated ``tensorrt`` module with the names it defines (methods, properties, annotated
    attributes, enum members); ``""`` holds the module-level names and every class name."""
    tree = ast.parse((stubs / "tensorrt_bindings" / "tensorrt.pyi").read_text())
    api: dict[str, set[str]] = {"": set()}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            api[""].add(node.name)
        if isinstance(node, ast.ClassDef):
            api[node.name] = {n.name if isinstance(n, (ast.FunctionDef, ast.ClassDef)) else n.target.id
                              for n in node.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))
                              or (isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name))}
    return api


def test_the_introspection_import_is_the_real_11_4_module_and_stays_out_of_this_process(trt_build):
    """The stub libraries satisfy ``tensorrt.so``: the module imports, reports 11.4, reads the parser version from
    the stub, and the factories fail as they must without TensorRT. This interpreter's ``tensorrt`` is untouched."""
    probe = tensorrt_api.run_in_tree(trt_build / "tree", trt_build / "lib", ["-c", """
import tensorrt as trt
print(trt.__version__, trt.get_nv_onnx_parser_version(), trt.Builder.__module__)
try:
    trt.Builder(trt.Logger(trt.Logger.WARNING))
except Exception as exc:
    print("refused:", exc)
"""])
    assert probe.returncode == 0, probe.stderr
    first, second = probe.stdout.splitlines()
    assert first == f"{tensorrt_api.WHEEL_VERSION} {tensorrt_api.PARSER_VERSION} tensorrt_bindings.tensorrt"
    assert "factory function returned nullptr" in second
    spec = importlib.util.find_spec("tensorrt")
    assert spec is None or not str(spec.origin or spec.submodule_search_locations).startswith(str(trt_build))


def test_the_stub_libraries_define_exactly_the_symbols_the_bindings_import(trt_build):
    """The nine symbols are all ``tensorrt.so`` needs from TensorRT (unversioned, not Python's), and are defined."""
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) is not installed")
    so = trt_build / "tree" / "tensorrt_bindings" / "tensorrt.so"
    needed = {line.split()[-1] for line in subprocess.run([nm, "-D", "--undefined-only", str(so)],
                                                            capture_output=True, text=True, check=True).stdout
              .splitlines() if line.split()[0] == "U" and "@" not in line}
    wanted = {name for symbols in tensorrt_api.STUB_SYMBOLS.values() for name in symbols}
    from_trt = {name for name in needed if not name.startswith(("Py", "_Py", "dl"))}  # not Python's or libdl's
    assert from_trt == wanted
    for library, symbols in tensorrt_api.STUB_SYMBOLS.items():
        defined = subprocess.run([nm, "-D", "--defined-only", str(trt_build / "lib" / library)],
                                 capture_output=True, text=True, check=True).stdout
        assert {line.split()[-1] for line in defined.splitlines()} >= set(symbols)


def test_the_removed_api_list_matches_tensorrt_11_4(stub_path):
    """Every name the scan above refuses is really gone from 11.4, so the scan never forbids a live API; and the
    network flag and timing-cache API arena relies on are there."""
    api = stub_api(stub_path)
    everywhere = set().union(*api.values())
    assert REMOVED_ATTRIBUTES & everywhere == set()
    assert REMOVED_BUILDER_FLAGS & api["BuilderFlag"] == set()
    assert "precision" not in api["ILayer"]
    assert "STRONGLY_TYPED" in api["NetworkDefinitionCreationFlag"]
    assert {"set_timing_cache", "create_timing_cache", "get_timing_cache"} <= api["IBuilderConfig"]
    assert {"BF16", "BOOL", "INT64", "HALF", "FLOAT"} <= api["DataType"]


def test_generated_stub_text_is_repaired_into_precise_valid_python():
    generated = """class ICudaEngine:
    pass
class ParserError:
    def desc(self) -> str:
        ...
class IHostMemory:
    @property
    def nbytes(self) -> int:
        ...
class OnnxParser:
    def get_error(self, index: int) -> nvonnxparser::IParserError:
        ...
    def engine(self) -> nvinfer1::ICudaEngine:
        ...
    def recorder(self) -> nvinfer1::v_1_0::IErrorRecorder:
        ...
    def plugin(self, in: int, out: int = 0, last: int) -> None:
        ...
def get_plugin_registry() -> detail::accessor<detail::accessor_policies::str_attr>:
    ...
"""
    text = tensorrt_api.repaired(generated)
    tree = ast.parse(text)
    assert "def get_error(self, index: int) -> ParserError:" in text
    assert "def engine(self) -> ICudaEngine:" in text
    assert "def recorder(self) -> typing.Any:" in text
    assert "def plugin(self, in_: int, out: int = 0, last: int = ...) -> None:" in text
    assert "def get_plugin_registry() -> typing.Any:" in text
    host = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "IHostMemory")
    assert [n.name for n in host.body if isinstance(n, ast.FunctionDef)] == ["__buffer__", "nbytes"]


def test_stub_library_source_returns_null_and_the_parser_version():
    source = tensorrt_api.stub_library_source(tensorrt_api.STUB_SYMBOLS["libnvonnxparser.so.11"])
    assert "void *createNvOnnxParser_INTERNAL() { return NULL; }" in source
    assert "int getNvOnnxParserVersion() { return 110400; }" in source
    assert sum(len(s) for s in tensorrt_api.STUB_SYMBOLS.values()) == 9


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

[mypy-tensorrt.*,tensorrt_bindings.*]
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
    """Control: with the stubs in effect, calls that do not exist in the 11.4 API are errors, not Any, and the
    correct calls arena makes (an engine's bytes, a parser error's text, the BF16 type) are not."""
    bad = tmp_path / "bad_trt.py"
    bad.write_text("""import tensorrt as trt


def build(engine: trt.ICudaEngine, context: trt.IExecutionContext, parser: trt.OnnxParser) -> bytes:
    engine.get_tensor_profile_shapes("input_ids", 0)
    context.execute_async_v3()
    trt.Builder(trt.Logger(trt.Logger.WARNING)).create_network("strongly typed")
    trt.BuilderFlag.FP16
    text: str = parser.get_error(0).desc() + str(trt.DataType.BF16) + trt.__version__
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    return bytes(builder.build_serialized_network(network, builder.create_builder_config())) + text.encode()
""")
    status, report = run_mypy(stub_path, [str(bad)], tmp_path)
    assert status == 1
    errors = [line for line in report.splitlines() if ": error:" in line]
    assert [int(line.split(":")[1]) for line in errors] == [5, 6, 7, 8], report
    assert 'has no attribute "get_tensor_profile_shapes"' in errors[0]
    assert "execute_async_v3" in errors[1] and "create_network" in errors[2]
    assert '"FP16"' in errors[3]
