"""The backends arena serves with, registered once.

Each module listed in :data:`BACKEND_MODULES` defines ``SPEC``, a :class:`~arena.serving.backends.contract.BackendSpec`
(name, precisions, devices, the folder it reads, the variants a folder offers it, how one opens). The CLI choices,
the up-front checks, ``--backend auto`` and arena-bench's cells are all read from these declarations, so adding a
backend is one new module plus one line here. Importing a backend module is cheap: each imports its runtime
(torch, onnxruntime, openvino, tensorrt) only when a variant is opened.
"""

from __future__ import annotations

import importlib

from arena.errors import ConfigError
from arena.serving.backends.contract import BackendSpec

BACKEND_MODULES = (
    "arena.serving.backends.torch",
    "arena.serving.backends.onnx",
    "arena.serving.backends.openvino",
    "arena.serving.backends.tensorrt",
)
"""The registration list, in the order the CLI lists them."""

_registered: dict[str, BackendSpec] = {}


def register(spec: BackendSpec) -> BackendSpec:
    """Add a backend declared outside :data:`BACKEND_MODULES` (a plugin, a test's toy backend); its name must be
    new. Returns ``spec``."""
    if spec.name in specs() and specs()[spec.name] is not spec:
        raise ValueError(f"a backend named {spec.name!r} is already registered")
    _registered[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a backend added with :func:`register` (tests)."""
    _registered.pop(name, None)


def specs() -> dict[str, BackendSpec]:
    """Every registered backend by name, in registration order."""
    out = {}
    for module in BACKEND_MODULES:
        spec = importlib.import_module(module).SPEC
        out[spec.name] = spec
    return {**out, **_registered}


def spec(name: str) -> BackendSpec:
    """The backend called ``name``; :class:`ConfigError` naming the registered ones otherwise."""
    known = specs()
    if name not in known:
        raise ConfigError(f"--backend must be one of auto, {', '.join(known)}; got {name!r}")
    return known[name]


def backend_names() -> tuple[str, ...]:
    """What ``--backend`` accepts: ``auto`` and every registered backend."""
    return ("auto", *specs())


def table() -> str:
    """The README's backend table, rendered from the declarations (a test keeps the README equal to it)."""
    rows = ["| backend | precisions | devices | reads | what it is |", "|---|---|---|---|---|"]
    for s in specs().values():
        rows.append(f"| `{s.name}` | {', '.join(s.precisions)} | {', '.join(s.devices)} | {s.reads} | {s.summary} |")
    return "\n".join(rows)
