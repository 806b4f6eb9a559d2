"""The machine a bundle is packed for: its Python, its platform tags and what its image already has.

What the target has comes from a ``pip freeze`` (``--target-freeze FILE``) or one of the default lists shipped with
arena (``freezes/kaggle-cpu.txt``, ``freezes/kaggle-gpu.txt``, each with its date and source in its header). Two
header lines, ``# python: 3.12`` and ``# platform: manylinux_2_35_x86_64``, give the target's interpreter and
platform; options override them. A ``name==version`` line is a pinned version; a bare ``name`` is present at an
unrecorded version (the pin check skips it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from arena.errors import ConfigError

DEFAULT_FREEZES = ("kaggle-cpu", "kaggle-gpu")
PYTHON_VERSIONS = ("3.10", "3.11", "3.12", "3.13", "3.14")
"""Target interpreters arena-pack knows: arena's ``requires-python`` (>= 3.10) up to the newest CPython."""
TORCH = "torch"
_HEADER = re.compile(r"^#\s*(python|platform):\s*(\S+)\s*$")
_PLATFORM = re.compile(r"^manylinux_(\d+)_(\d+)_(x86_64|aarch64)$")


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): ``Huggingface_Hub`` -> ``huggingface-hub``."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Target:
    """What a bundle is packed for. ``packages``: canonical name -> version (None: present, version unknown)."""

    name: str
    python: str
    platform: str
    packages: dict[str, str | None] = field(default_factory=dict)

    def has(self, dist: str) -> bool:
        return canonical(dist) in self.packages

    def constraints(self) -> list[str]:
        """``name==version`` for every pinned package, without local labels (``2.10.0+cpu`` -> ``2.10.0``: an
        index holds the public version, and ``==2.10.0`` admits the local one the image has)."""
        return [f"{n}=={v.split('+')[0]}" for n, v in sorted(self.packages.items()) if v]


def parse_freeze(text: str, source: str) -> tuple[dict[str, str | None], dict[str, str]]:
    """(packages, header) of a ``pip freeze`` text. Editable and URL lines (``-e ...``, ``name @ file://...``) name
    a package the image has at a version pip cannot compare: present, version unknown."""
    packages: dict[str, str | None] = {}
    header: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        match = _HEADER.match(line)
        if match:
            header[match.group(1)] = match.group(2)
            continue
        if not line or line.startswith("#"):
            continue
        if line.startswith("-e "):
            egg = re.search(r"#egg=([A-Za-z0-9_.-]+)", line)
            if egg:
                packages[canonical(egg.group(1))] = None
            continue
        name, sep, version = line.partition("==")
        if " @ " in name:
            packages[canonical(name.split(" @ ")[0].strip())] = None
            continue
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name.strip()) or (sep and not version.strip()):
            raise ConfigError(f"--target-freeze {source}: line {number} ({line!r}) is not `name==version` as "
                              "`pip freeze` writes it")
        packages[canonical(name.strip())] = version.strip() or None
    return packages, header


def platform_tags(platform: str) -> list[str]:
    """Every platform tag a target with ``platform`` runs, newest first, for pip's repeated ``--platform``.

    pip does not widen ``manylinux_2_35_x86_64`` to the older glibc tags a machine with glibc 2.35 also runs (it
    does so only for the legacy ``manylinux2014`` names), so the list is spelled out here."""
    match = _PLATFORM.match(platform)
    if not match:
        if platform.startswith(("win", "macosx", "linux_", "manylinux1", "manylinux2010", "manylinux2014")):
            return [platform]
        raise ConfigError(f"--platform {platform!r} is not a wheel platform tag such as manylinux_2_35_x86_64")
    major, minor, arch = int(match.group(1)), int(match.group(2)), match.group(3)
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 16, -1)]
    if minor >= 17:
        tags.append(f"manylinux2014_{arch}")
    return tags


def check_python(version: str) -> str:
    if version not in PYTHON_VERSIONS:
        raise ConfigError(f"--python-version {version!r} is not a target Python arena-pack knows; use one of "
                          f"{', '.join(PYTHON_VERSIONS)} (the version `python --version` prints on the target, "
                          "major.minor)")
    return version


def load_target(freeze: str | Path | None, *, default: str = "kaggle-cpu", python: str | None = None,
                platform: str | None = None) -> Target:
    """The target from ``freeze`` (a file) or the default list ``default``, with ``python`` / ``platform``
    overriding its header. Raises :class:`ConfigError` for a missing or unreadable file or an unknown Python."""
    if freeze is None:
        if default not in DEFAULT_FREEZES:
            raise ConfigError(f"--target {default!r} is not a default target; use one of {', '.join(DEFAULT_FREEZES)}"
                              " or pass --target-freeze FILE")
        text = resources.files("arena.pack").joinpath("freezes", f"{default}.txt").read_text()
        name = default
    else:
        path = Path(freeze)
        if not path.is_file():
            raise ConfigError(f"--target-freeze {path} does not exist; pass the target's `pip freeze` output (run it "
                              "in a Kaggle notebook and save it), or leave it out for the default Kaggle list")
        text, name = path.read_text(errors="replace"), str(path)
    packages, header = parse_freeze(text, name)
    python = python or header.get("python")
    if python is None:
        raise ConfigError(f"--target-freeze {name} does not say the target's Python; pass --python-version "
                          "(e.g. 3.12) or add a `# python: 3.12` line")
    platform = platform or header.get("platform") or "manylinux_2_35_x86_64"
    platform_tags(platform)
    return Target(name, check_python(python), platform, packages)
