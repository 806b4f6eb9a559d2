"""``wheels/``: arena's own wheel and every dependency the target lacks, for the target's Python and platform.

Nothing here resolves versions itself: pip does, with its own ``--python-version / --platform / --only-binary``
machinery. The steps:

1. arena's wheel is built from its source tree (copied to a temporary folder, so the checkout gains no ``build/``)
   with ``pip wheel --no-deps``; its ``Requires-Dist`` lines are arena's pins, read from the wheel (one home:
   ``pyproject.toml``).
2. Each pin is compared with the target's freeze: a package the target has at a version the pin refuses is a
   conflict (one error naming both); a package it lacks is to be packed.
3. pip resolves what is to be packed for the target (``pip install --dry-run --report``, the target's pinned
   versions as constraints), and only the distributions the target lacks are downloaded (``pip download
   --no-deps``). torch is never downloaded unless asked (``--with-torch``): a CPU or CUDA torch wheel is 0.2-2.5 GB
   and every Kaggle image has one.
"""

from __future__ import annotations

import email.parser
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from arena.errors import ConfigError
from arena.pack.target import TORCH, Target, canonical, platform_tags

log = logging.getLogger(__name__)
DIST = "arena-toolkit"


@dataclass(frozen=True)
class Pin:
    """One distribution to pack, as pip resolved it."""

    name: str
    version: str


def source_root() -> Path:
    """The folder holding arena's ``pyproject.toml`` (a checkout or an editable install)."""
    import arena

    root = Path(arena.__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file() or not (root / "src" / "arena").is_dir():
        raise ConfigError(f"arena-pack builds arena's wheel from its source tree, and this arena ({root}) was not "
                          "installed from one; install arena-toolkit from a checkout (pip install -e .)")
    return root


def build_arena_wheel(dest: Path) -> Path:
    """Build arena's wheel into ``dest`` from a copy of the source tree; return its path."""
    root = source_root()
    with tempfile.TemporaryDirectory(prefix="arena-pack-src-") as tmp:
        copy = Path(tmp) / "src-tree"
        copy.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (root / name).is_file():
                shutil.copy2(root / name, copy / name)
        shutil.copytree(root / "src" / "arena", copy / "src" / "arena",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        run_pip(["wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(dest), str(copy)],
                "build arena's wheel")
    wheels = sorted(dest.glob("arena_toolkit-*.whl"))
    if not wheels:
        raise ConfigError(f"pip wheel wrote no arena_toolkit wheel into {dest}")
    return wheels[-1]


def wheel_requirements(wheel: Path) -> list[str]:
    """The ``Requires-Dist`` lines of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(zf.read(name).decode())
    return meta.get_all("Requires-Dist") or []


def marker_environment(target: Target, extra: str = "") -> dict[str, str]:
    arch = "aarch64" if target.platform.endswith("aarch64") else "x86_64"
    return {"python_version": target.python, "python_full_version": f"{target.python}.0", "os_name": "posix",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": arch,
            "platform_release": "", "platform_version": "", "implementation_name": "cpython",
            "implementation_version": f"{target.python}.0", "platform_python_implementation": "CPython",
            "extra": extra}


def missing_requirements(requirements: list[str], target: Target, *, extras: tuple[str, ...] = (),
                         with_torch: bool = False) -> list[str]:
    """arena's requirements (those whose markers hold on the target, with ``extras``) that the target lacks.

    Raises :class:`ConfigError` when the target has a package at a version arena's pin refuses, or lacks torch
    while ``with_torch`` is off."""
    from packaging.requirements import Requirement

    missing = []
    for line in requirements:
        req = Requirement(line)
        if req.marker is not None and not any(req.marker.evaluate(marker_environment(target, e))
                                              for e in ("", *extras)):
            continue
        name = canonical(req.name)
        if name in target.packages:
            have = target.packages[name]
            if have is not None and req.specifier and not req.specifier.contains(have, prereleases=True):
                raise ConfigError(f"arena-toolkit requires {req.name}{req.specifier} but the target ({target.name}) "
                                  f"has {req.name} {have}; pack for another image (--target-freeze) or install an "
                                  "arena release whose pin admits it")
            continue
        if name == TORCH and not with_torch:
            raise ConfigError(f"the target ({target.name}) has no torch and arena-pack packs it only when asked: "
                              "pass --with-torch (a wheel of 0.2-2.5 GB), or a --target-freeze that lists torch")
        missing.append(str(req.name) + str(req.specifier))
    return missing


def _target_flags(target: Target) -> list[str]:
    flags = ["--only-binary=:all:", "--python-version", target.python, "--implementation", "cp"]
    for tag in platform_tags(target.platform):
        flags += ["--platform", tag]
    return flags


def resolve(requirements: list[str], target: Target, *, sources: list[str], with_torch: bool) -> list[Pin]:
    """What pip would install on the target for ``requirements``, less what the target has; torch refused unless
    ``with_torch``."""
    if not requirements:
        return []
    with tempfile.TemporaryDirectory(prefix="arena-pack-resolve-") as tmp:
        constraints = Path(tmp) / "target-constraints.txt"
        constraints.write_text("\n".join(c for c in target.constraints() if canonical(c.split("==")[0]) != TORCH
                                         or with_torch) + "\n")
        report = Path(tmp) / "report.json"
        run_pip(["install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
                 "--constraint", str(constraints), *_target_flags(target), *sources, *requirements],
                f"resolve {', '.join(requirements)} for Python {target.python} on {target.platform}")
        installs = json.loads(report.read_text()).get("install", [])
    pins = [Pin(canonical(i["metadata"]["name"]), i["metadata"]["version"]) for i in installs]
    pins = [p for p in pins if not target.has(p.name)]
    if not with_torch and any(p.name == TORCH for p in pins):
        raise ConfigError(f"packing {', '.join(requirements)} would pull torch, which the target ({target.name}) "
                          "lacks; pass --with-torch, or a --target-freeze that lists torch")
    return pins


def download(pins: list[Pin], dest: Path, target: Target, *, sources: list[str]) -> list[Path]:
    """Download exactly ``pins`` (no dependencies: pip resolved them already) as wheels for the target."""
    if not pins:
        return []
    before = set(dest.glob("*.whl"))
    run_pip(["download", "--no-deps", "--quiet", "--dest", str(dest), *_target_flags(target), *sources,
             *[f"{p.name}=={p.version}" for p in pins]], f"download {len(pins)} wheels for the target")
    return sorted(set(dest.glob("*.whl")) - before)


def run_pip(args: list[str], what: str) -> None:
    """Run pip with this interpreter; a failure is one :class:`ConfigError` carrying pip's own last error line."""
    log.debug("pip %s", " ".join(args))
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        lines = [ln.strip() for ln in (done.stderr + done.stdout).splitlines()
                 if ln.strip() and not ln.startswith("WARNING")]
        detail = next((ln for ln in lines if ln.startswith("ERROR")), lines[-1] if lines else "no output")
        conflict = " (a pin of arena or of a packed package conflicts with the target's versions)" \
            if "conflict" in (done.stderr + done.stdout).lower() else ""
        raise ConfigError(f"pip could not {what}{conflict}: {detail}")
