"""``arena-bench``'s up-front checks: cells, folders, thresholds and output, before the first cell is measured
(a mistake found after an hour of cells would throw that hour away)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from arena.bench.runner import COMPILED
from arena.errors import ConfigError

BENCH_FILES = ("bench.md", "bench.json", "bench.html", "bench.png")
DEFAULT_BACKENDS = "torch:fp32,onnx:fp32,onnx:int8,openvino:bf16,openvino:int8"
DEFAULT_BASELINE = "torch:fp32/notebook"


def parse_cells(cells: str | None, backends: str, policies: str) -> list[Any]:
    """The cells to measure, each ``backend:precision/policy`` checked; the same cell twice is refused."""
    from arena.bench.runner import CellSpec
    from arena.cli.options import check_precision, one_of
    from arena.serving.batching import POLICIES

    if cells:
        pairs = []
        for text in cells.split(","):
            backend, slash, policy = text.strip().rpartition("/")
            if not slash or not backend or not policy:
                raise ConfigError(f"--cells takes backend:precision/policy entries such as torch:fp32/sorted; "
                                  f"got {text.strip()!r}")
            pairs.append((backend, policy))
    else:
        pairs = [(b.strip(), p.strip()) for b in backends.split(",") for p in policies.split(",")]
    specs = []
    for backend, policy in pairs:
        spec = CellSpec.parse(backend, policy)
        one_of("backend in --cells/--backends", spec.backend, bench_backends())
        check_precision("precision in --cells/--backends", spec.backend, spec.precision)
        one_of("policy in --cells/--policies", spec.policy, POLICIES)
        if spec in specs:
            raise ConfigError(f"cell {spec.name} is listed twice; list each cell once")
        specs.append(spec)
    return specs


def read_thresholds(check: Path, cell_names: list[str]) -> dict[str, Any]:
    """``--check``: a JSON object whose ``ratios`` compare cells this run measures."""
    from arena.cli.options import existing_file

    existing_file("--check", check, "a JSON file of ratio thresholds such as benchmarks/thresholds.json")
    try:
        thresholds = json.loads(check.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"--check {check} is not valid JSON: {exc}") from None
    ratios = thresholds.get("ratios") if isinstance(thresholds, dict) else None
    if not isinstance(ratios, list) or not all(isinstance(r, dict) for r in ratios):
        raise ConfigError(f"--check {check} needs a 'ratios' list of {{name, numerator, denominator, min}} objects")
    for rule in ratios:
        missing = [k for k in ("name", "numerator", "denominator", "min") if k not in rule]
        if missing or not isinstance(rule["min"], int | float):
            raise ConfigError(f"--check {check}: ratio {rule.get('name', rule)!r} needs name, numerator, "
                              "denominator and a numeric min")
        for entry in rule.get("where_cpu", []):
            if not isinstance(entry, dict) or not isinstance(entry.get("min"), int | float) or not (
                    entry.get("flags_all") or entry.get("flags_none")):
                raise ConfigError(f"--check {check}: ratio {rule['name']!r} has a where_cpu entry without a numeric "
                                  "min and a flags_all or flags_none list")
        for side in ("numerator", "denominator"):
            if rule[side] not in cell_names:
                raise ConfigError(f"--check {check}: ratio {rule['name']!r} compares cell {rule[side]}, which this "
                                  f"run does not measure; add it to --cells (measured: {', '.join(cell_names)})")
    return thresholds


def check_bench_request(*, model: Path, export: Path | None, specs: list[Any], numbers: dict[str, int | None],
                        baseline: str, data_path: Path, out: Path, check: Path | None) -> list[str]:
    """Folders, numbers, baseline and output; returns the report files an earlier run left in ``out``."""
    from arena.cli.options import at_least, existing_folder
    from arena.cli.safety import check_report_out
    from arena.data import check_layout
    from arena.models.modeling import check_max_length, check_model_folder, load_model_config, read_meta
    from arena.serving.batching import round_up

    for flag, minimum in (("rows", 1), ("batch_size", 1), ("max_tokens", 1), ("repeats", 1), ("warmup", 0),
                          ("threads", 1), ("encode_workers", 0), ("max_length", 16)):
        at_least("--" + flag.replace("_", "-"), numbers[flag], minimum)
    existing_folder("--model", model, "the arena-train checkpoint folder (torch cells, encoder settings)")
    check_model_folder(model)
    length = numbers["max_length"] or read_meta(model).encoder.max_length
    check_max_length(load_model_config(model), length)
    if numbers["max_tokens"] is not None and numbers["max_tokens"] < round_up(length, 8):
        raise ConfigError(f"--max-tokens {numbers['max_tokens']} is smaller than one padded row of max length "
                          f"{length} ({round_up(length, 8)} tokens); raise it or leave it out")
    if export is not None:
        from arena.artifacts import MANIFEST

        existing_folder("--export", export, "the arena-export folder")
        manifest = _read_manifest(export)
        if manifest is None:
            raise ConfigError(f"--export {export} has no readable {MANIFEST}: pass the folder arena-export "
                              "wrote")
        check_export_source(model, export, manifest)
    names = [s.name for s in specs]
    if baseline not in names and baseline != DEFAULT_BASELINE:
        raise ConfigError(f"--baseline {baseline} is not among the measured cells ({', '.join(names)})")
    check_layout(data_path, labelled=False)
    return check_report_out(out, names=BENCH_FILES, owner="bench.json", kind="arena-bench",
                            inputs={"checkpoint": model, "export folder": export, "data file": data_path,
                                    "threshold file": check})


def check_export_source(model: Path, export: Path, manifest: dict[str, Any]) -> None:
    """``--export`` must have been made from ``--model``: the torch cells measure one model and the export cells
    another, and the report would compare them as one. The manifest's ``source_weights_sha256`` (the sha256 of the
    source checkpoint's weight files) must equal ``--model``'s, wherever either was copied; an older export without
    it must name ``--model`` as its ``source_checkpoint``, or a folder whose weights are ``--model``'s. Raises
    :class:`ConfigError` naming both; warns when an old export's source is gone and nothing can be compared."""
    import logging

    from arena.models.weights import weights_sha256

    source = manifest.get("source_checkpoint")
    recorded = manifest.get("source_weights_sha256")
    if not isinstance(recorded, dict) or not recorded:
        if not source or Path(source).resolve() == model.resolve():
            return
        if not Path(source).is_dir():
            logging.getLogger(__name__).warning(
                "--export %s was made from %s, which is not on this machine and whose weights the manifest does not "
                "record: nothing checks that it is --model %s", export, source, model)
            return
        recorded = weights_sha256(Path(source))
    mine = weights_sha256(model)
    if mine != recorded:
        differ = sorted(name for name in set(mine) | set(recorded) if mine.get(name) != recorded.get(name))
        raise ConfigError(f"--export {export} was made from {source}, not from --model {model}: their weights differ "
                          f"({', '.join(differ)}). Pass the checkpoint the export was made from as --model, or export "
                          f"--model again (arena-export {model} --out DIR)")


def _read_manifest(export: Path) -> dict[str, Any] | None:
    from arena.artifacts import read_manifest

    try:
        manifest = read_manifest(export)
    except ConfigError:
        return None
    return manifest if isinstance(manifest, dict) else None


def bench_backends() -> tuple[str, ...]:
    """The backends a cell may name: every registered one, and torch.compile."""
    from arena.serving.backends import specs

    names = list(specs())
    return tuple(names[:1] + [COMPILED] + names[1:]) if "torch" in names else tuple(names)


def cell_folder(backend: str, model: Path, export: Path | None) -> Path | None:
    """The folder a cell reads: the checkpoint for a backend declared to read one, else the export."""
    from arena.serving.backends import spec

    return model if spec("torch" if backend == COMPILED else backend).reads == "checkpoint" else export


def why_not(spec: Any, export: Path | None, model: Path | None = None) -> str | None:
    """Why ``spec`` cannot be measured with these folders (None: it can): a cell that needs an export and has
    none, a precision the folder does not offer or that failed its parity check, a backend not installed; read
    from the backend's declared variants."""
    from arena.serving.backends import spec as backend_spec
    from arena.serving.folder import read_folder

    declared = backend_spec("torch" if spec.backend == COMPILED else spec.backend)
    path = model if declared.reads == "checkpoint" else export
    if path is None:
        return None if declared.reads == "checkpoint" else "needs --export (the arena-export folder)"
    folder = read_folder(path)
    variants = [v for v in declared.variants(folder) if spec.precision in ("auto", v.precision)]
    if not variants:
        return declared.absent(folder) if spec.precision == "auto" else \
            f"{path} offers no {declared.name} {spec.precision} variant"
    if any(v.usable for v in variants):
        return None
    return "; ".join(f"{v.name}: {v.why_not}" for v in variants)


def runnable_cells(specs: list[Any], export: Path | None, *, explicit: bool,
                   baseline: str = DEFAULT_BASELINE, model: Path | None = None) -> tuple[list[Any], list[str]]:
    """Split ``specs`` into the cells these folders can run and ``name: why`` for the rest. Cells the user listed
    (``explicit``: --cells or --backends given) must all run: the first that cannot is an error. The default matrix
    measures what the folders support and says what it skipped."""
    keep, skipped = [], []
    for spec in specs:
        why = why_not(spec, export, model)
        if why is None:
            keep.append(spec)
        elif explicit or spec.name == baseline:
            raise ConfigError(f"cell {spec.name}: {why}")
        else:
            skipped.append(f"{spec.name}: {why}")
    if not keep:
        raise ConfigError("no cell can run with these folders: " + "; ".join(skipped))
    return keep, skipped
