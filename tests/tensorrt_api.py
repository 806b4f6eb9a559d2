"""Type stubs of the real TensorRT 11.4 Python API, generated on a machine without TensorRT or a GPU.

NVIDIA's PyPI wheel ``tensorrt-cu13-bindings`` holds the real ``tensorrt_bindings/tensorrt.so``. It links against
``libnvinfer.so.11``, ``libnvinfer_plugin.so.11`` and ``libnvonnxparser.so.11`` (hundreds of MB, not installable
here), but needs from them only the plain C entry points in :data:`STUB_SYMBOLS`. Tiny libraries that define those
(returning NULL, or the parser version) let the module import, so every class, enum member and signature can be
read back: ``Builder(logger)`` then raises "factory function returned nullptr", as it should without TensorRT.
``pybind11-stubgen`` turns the module into ``.pyi`` files, which :func:`build_stubs` repairs where the generated text
is not valid Python or names C++ types; mypy then checks arena's TensorRT code against them.

Nothing here touches the interpreter that imports this module: the introspection import runs in a subprocess with
its own ``PYTHONPATH`` and ``LD_LIBRARY_PATH``, so a real ``tensorrt`` elsewhere is never shadowed.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

WHEEL_NAME = "tensorrt-cu13-bindings"
WHEEL_VERSION = "11.4.0.106"
WHEEL_DIR = Path(__file__).resolve().parents[1] / "build" / "wheels"
"""Where ``make install`` downloads the wheel (``pip download --no-deps``); ``ARENA_TENSORRT_WHEEL`` overrides."""

PARSER_VERSION = 110400
STUB_SYMBOLS: dict[str, dict[str, str]] = {
    "libnvinfer.so.11": {
        "createInferBuilder_INTERNAL": "void *", "createInferRefitter_INTERNAL": "void *",
        "createInferRuntime_INTERNAL": "void *", "getPluginRegistry": "void *",
        "getBuilderPluginRegistry": "void *",
    },
    "libnvinfer_plugin.so.11": {"initLibNvInferPlugins": "int"},
    "libnvonnxparser.so.11": {
        "createNvOnnxParser_INTERNAL": "void *", "createNvOnnxParserRefitter_INTERNAL": "void *",
        "getNvOnnxParserVersion": "int",
    },
}
"""The nine C symbols ``tensorrt.so`` 11.4 imports from TensorRT (``nm -D --undefined-only``), by library, with the
return type the stub gives them. Factories return NULL; the parser version is 11.4's."""

ENUMS = {"DataType": "", "EngineStat": "", "PluginFieldType": "", "Severity": ".ILogger",
         "ExecutionContextAllocationStrategy": ""}
"""Enums whose default values pybind11 prints as ``<DataType.FLOAT: 0>``: the scope (below
``tensorrt_bindings.tensorrt``) their classes live in."""

BUFFER_PROTOCOL = {"IHostMemory": "    def __buffer__(self, flags: int, /) -> memoryview: ...\n"}
"""Python-level protocols pybind11-stubgen does not see (``py::buffer_protocol()``): ``bytes(serialized_engine)``."""


class Unavailable(Exception):
    """The stubs cannot be built on this machine (no wheel, no C compiler, not CPython 3.11); the message says why."""


WHEEL_GLOB = f"{WHEEL_NAME.replace('-', '_')}-{WHEEL_VERSION}-*.whl"


def find_wheel() -> Path:
    explicit = os.environ.get("ARENA_TENSORRT_WHEEL")
    if explicit and not Path(explicit).is_file():
        raise Unavailable(f"ARENA_TENSORRT_WHEEL={explicit} is not a file")
    if explicit:
        return Path(explicit)
    found = sorted(WHEEL_DIR.glob(WHEEL_GLOB))
    if not found:
        raise Unavailable(f"{WHEEL_DIR / WHEEL_GLOB} is missing (make install downloads it: pip download --no-deps "
                          f"{WHEEL_NAME}=={WHEEL_VERSION})")
    return found[0]


def stub_library_source(symbols: dict[str, str]) -> str:
    """C source defining each symbol as a function of no declared parameters (callers' arguments are ignored)."""
    lines = ["#include <stddef.h>"]
    for name, kind in symbols.items():
        value = str(PARSER_VERSION) if name == "getNvOnnxParserVersion" else ("0" if kind == "int" else "NULL")
        lines.append(f"{kind}{'' if kind.endswith('*') else ' '}{name}() {{ return {value}; }}")
    return "\n".join(lines) + "\n"


def build_stub_libraries(dest: Path) -> Path:
    """Compile the three stub libraries into ``dest`` with the system C compiler."""
    cc = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if cc is None:
        raise Unavailable("no C compiler (gcc or cc) to build the TensorRT stub libraries")
    dest.mkdir(parents=True, exist_ok=True)
    for library, symbols in STUB_SYMBOLS.items():
        source = dest / f"{library.split('.')[0]}.c"
        source.write_text(stub_library_source(symbols))
        done = subprocess.run([cc, "-shared", "-fPIC", f"-Wl,-soname,{library}", "-o", str(dest / library),
                               str(source)], capture_output=True, text=True)
        if done.returncode:
            raise Unavailable(f"{cc} could not build {library}: {done.stderr.strip()}")
    return dest


def introspection_tree(wheel: Path, dest: Path) -> Path:
    """The wheel's ``tensorrt_bindings`` plus the meta-package's ``tensorrt/__init__.py``, unpacked under ``dest``
    (a folder for ``PYTHONPATH``, never the environment's site-packages)."""
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(dest)
    (dest / "tensorrt").mkdir(exist_ok=True)
    (dest / "tensorrt" / "__init__.py").write_text(
        f"from tensorrt_bindings import *  # noqa: F403\n__version__ = {WHEEL_VERSION!r}\n")
    return dest


def introspection_env(tree: Path, libs: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
    env["LD_LIBRARY_PATH"] = os.pathsep.join([str(libs), *filter(None, [env.get("LD_LIBRARY_PATH")])])
    return env


def run_in_tree(tree: Path, libs: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], env=introspection_env(tree, libs), capture_output=True,
                          text=True, timeout=300)


def generate(tree: Path, libs: Path, out: Path) -> Path:
    """Run pybind11-stubgen on the imported module; raises :class:`Unavailable` when it cannot be imported here."""
    if sys.version_info[:2] != (3, 11):
        raise Unavailable(f"the {WHEEL_NAME} {WHEEL_VERSION} wheel is built for CPython 3.11, not "
                          f"{sys.version_info.major}.{sys.version_info.minor}")
    probe = run_in_tree(tree, libs, ["-c", "import tensorrt"])
    if probe.returncode:
        raise Unavailable(f"the TensorRT bindings do not import over the stub libraries: {probe.stderr[-600:]}")
    enums = [f"^{name}$:tensorrt_bindings.tensorrt{where}" for name, where in ENUMS.items()]
    done = run_in_tree(tree, libs, ["-m", "pybind11_stubgen", "tensorrt_bindings", "-o", str(out),
                                    "--print-invalid-expressions-as-is", "--ignore-all-errors",
                                    *[arg for e in enums for arg in ("--enum-class-locations", e)]])
    if done.returncode or not (out / "tensorrt_bindings").is_dir():
        raise Unavailable(f"pybind11-stubgen failed: {(done.stderr or done.stdout)[-600:]}")
    return out


_CPP_NAME = re.compile(r"\b(?:nvinfer1|nvonnxparser)::(?:v_\d+_\d+::)?(\w+)")
_CPP_OTHER = re.compile(r"\bdetail::accessor<[^>]*>")
_KEYWORD_PARAM = re.compile(r"(?<=[(,\s])(in|lambda|from|def|class|is|not|and|or)(?=:)")


def python_name(cpp: str, classes: set[str]) -> str:
    """The Python class a C++ type in a signature is bound as: ``nvinfer1::ICudaEngine`` -> ``ICudaEngine``,
    ``nvinfer1::IBuilder`` -> ``Builder``, ``nvonnxparser::IParserError`` -> ``ParserError``; else ``typing.Any``."""
    for candidate in (cpp, cpp[1:] if cpp.startswith("I") else None):
        if candidate in classes:
            return candidate
    return "typing.Any"


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


def repair_def(line: str) -> str:
    """Make one generated ``def`` line valid Python: parameters named after keywords (``in``) are renamed, and a
    parameter without a default after one with a default gets ``= ...``."""
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


def repaired(text: str) -> str:
    """One generated stub file made valid and precise: C++ type names become the classes they are bound as, lines
    that do not parse are repaired one by one, and :data:`BUFFER_PROTOCOL` methods are declared."""
    classes = set(re.findall(r"^\s*class (\w+)", text, flags=re.M))
    text = _CPP_OTHER.sub("typing.Any", _CPP_NAME.sub(lambda m: python_name(m.group(1), classes), text))
    for cls, method in BUFFER_PROTOCOL.items():
        text = re.sub(rf"^(class {cls}\b[^\n]*:\n)", lambda m, method=method: m.group(1) + method, text,
                      count=1, flags=re.M)
    lines = text.splitlines()
    for _ in range(500):
        try:
            ast.parse("\n".join(lines))
            break
        except SyntaxError as exc:
            k = (exc.lineno or 1) - 1
            fixed = repair_def(lines[k])
            if fixed == lines[k]:
                raise
            lines[k] = fixed
    return "\n".join(lines) + "\n"


def build_stubs(work: Path) -> Path:
    """Everything above, in ``work``: returns the folder to put on mypy's path (``tensorrt`` and
    ``tensorrt_bindings`` stub packages). Raises :class:`Unavailable` with the reason where it cannot be done."""
    wheel = find_wheel()
    libs = build_stub_libraries(work / "lib")
    tree = introspection_tree(wheel, work / "tree")
    out = generate(tree, libs, work / "generated")
    stubs = work / "stubs"
    for stub in (out / "tensorrt_bindings").rglob("*.pyi"):
        target = stubs / stub.relative_to(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(repaired(stub.read_text()))
    (stubs / "tensorrt").mkdir(parents=True, exist_ok=True)
    (stubs / "tensorrt" / "__init__.pyi").write_text(
        "from tensorrt_bindings import *\n"
        "from tensorrt_bindings import __version__ as __version__\n")
    return stubs


def download() -> int:
    """Fetch the wheel into :data:`WHEEL_DIR` (``make install``); prints why and returns 0 when it cannot, since the
    test then skips with that reason."""
    if list(WHEEL_DIR.glob(WHEEL_GLOB)):
        return 0
    done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                           "--python-version", "3.11", "--implementation", "cp", "--platform",
                           "manylinux_2_28_x86_64", "-d", str(WHEEL_DIR), f"{WHEEL_NAME}=={WHEEL_VERSION}"])
    if done.returncode:
        print(f"could not download {WHEEL_NAME}=={WHEEL_VERSION}: the TensorRT 11.4 type check will skip")
    return 0


if __name__ == "__main__":
    sys.exit(download())
