"""``arena-pack``: models -> one folder to upload as a Kaggle Dataset, with a notebook that scores offline."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from arena.cli.app import run_app, setup_logging
from arena.cli.options import CALIBRATE_HELP
from arena.errors import ConfigError, cli_errors

log = logging.getLogger("arena.pack")
app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)


@app.command(epilog="Examples:\n\n  arena-pack runs/export --out kaggle/bundle --dataset-id alice/arena-bundle\n\n"
             "  arena-pack runs/folds-export runs/lora --out kaggle/blend --weights 0.6,0.4 --tta swap\n\n"
             "  arena-pack runs/export --out kaggle/gpu --target kaggle-gpu --backend onnx --extra gpu\n\n"
             "  arena-pack runs/export --out kaggle/b --target-freeze kaggle-freeze.txt --time-limit 8h")
@cli_errors
def pack(
    models: Annotated[list[Path], typer.Argument(
        help="What arena-infer takes: checkpoints, exports, fold ensembles, LoRA checkpoints (their base is "
             "packed too); several models make a blend")],
    out: Annotated[Path, typer.Option(help="The bundle folder to write (upload it as a Kaggle Dataset)")],
    dataset_id: Annotated[str | None, typer.Option(
        help="USER/SLUG of the Kaggle Dataset (default: $KAGGLE_USERNAME/<--out folder name>)")] = None,
    title: Annotated[str, typer.Option(help="Dataset title, 6-50 characters (default: from the slug)")] = "",
    license: Annotated[str, typer.Option(help="Dataset licence as the Kaggle API names it")] = "CC0-1.0",
    target: Annotated[str, typer.Option(help="Default image list when no --target-freeze: kaggle-cpu or "
                                             "kaggle-gpu")] = "kaggle-cpu",
    target_freeze: Annotated[Path | None, typer.Option(
        help="`pip freeze` of the target image: what it has is not packed")] = None,
    python_version: Annotated[str | None, typer.Option(help="Target Python, e.g. 3.12 (default: the freeze's)")]
    = None,
    platform: Annotated[str | None, typer.Option(help="Target wheel platform (default: the freeze's, else "
                                                      "manylinux_2_35_x86_64)")] = None,
    extra: Annotated[list[str] | None, typer.Option(help="arena extras to pack as well: openvino, gpu")] = None,
    with_torch: Annotated[bool, typer.Option(help="Pack torch when the target lacks it (a 0.2-2.5 GB wheel)")]
    = False,
    find_links: Annotated[list[Path] | None, typer.Option(help="Also take wheels from this folder")] = None,
    no_index: Annotated[bool, typer.Option("--no-index", help="Take wheels only from --find-links and pip's "
                                                              "configured find-links (no package index)")] = False,
    backend: Annotated[str, typer.Option(help="arena-infer --backend in the notebook")] = "auto",
    precision: Annotated[str, typer.Option(help="arena-infer --precision in the notebook")] = "auto",
    calibrate: Annotated[bool, typer.Option("--calibrate/--no-calibrate",
                                            help="arena-infer's in the notebook: " + CALIBRATE_HELP)] = True,
    tta: Annotated[str, typer.Option(help="arena-infer --tta: none or swap")] = "none",
    devices: Annotated[str | None, typer.Option(help="arena-infer --devices (e.g. cuda:0,cuda:1 on 2x T4)")]
    = None,
    weights: Annotated[str | None, typer.Option(help="arena-infer --weights, one per MODEL")] = None,
    combine: Annotated[str, typer.Option(help="arena-infer --combine: probs or geometric")] = "probs",
    rules: Annotated[str | None, typer.Option(help="arena-infer --rules")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="arena-infer --max-tokens")] = None,
    time_limit: Annotated[str | None, typer.Option(help="arena-infer --time-limit in the notebook ('none': no "
                                                        "projection)")] = "9h",
    time_limit_action: Annotated[str, typer.Option(help="error or warn")] = "error",
    max_size_gb: Annotated[float, typer.Option(help="Refuse a bundle larger than this (Kaggle's dataset limit)")]
    = 200.0,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier bundle in --out")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Pack MODELS, the wheels the target lacks and a submission notebook into --out."""
    setup_logging(verbose)
    options = infer_options(len(models), backend=backend, precision=precision, tta=tta, devices=devices,
                            weights=weights, combine=combine, rules=rules, max_tokens=max_tokens,
                            time_limit=time_limit, time_limit_action=time_limit_action, calibrate=calibrate)
    summary = run_pack(models, out, dataset_id=dataset_id, title=title, license=license, target=target,
                       target_freeze=target_freeze, python_version=python_version, platform=platform,
                       extras=tuple(extra or ()), with_torch=with_torch, find_links=find_links or [],
                       no_index=no_index, infer_options=options, max_size_gb=max_size_gb, overwrite=overwrite)
    size = summary["bytes"]
    typer.echo(f"wrote the bundle {out} for {summary['target']['name']} (Python {summary['target']['python']}): "
               f"{size['total'] / 1e6:.1f} MB ({len(summary['wheels']) + 1} wheels {size['wheels'] / 1e6:.1f} MB, "
               f"models {size['models'] / 1e6:.1f} MB); upload it with `kaggle datasets create -p {out}` and run "
               "its submit.ipynb with the internet off")
    typer.echo(json.dumps(summary))


def infer_options(n_models: int, *, backend: str, precision: str, tta: str, devices: str | None,
                  weights: str | None, combine: str, rules: str | None, max_tokens: int | None,
                  time_limit: str | None, time_limit_action: str, calibrate: bool = True) -> list[str]:
    """The arena-infer options the notebook passes, each checked as arena-infer would check it (except what
    depends on the machine, such as whether it has a GPU). ``calibrate`` False: ``--no-calibrate`` (the notebook
    then runs the declared order: a fresh Kaggle kernel has no cached choice)."""
    from arena.cli.options import at_least, backend_precisions, one_of
    from arena.serving.ensemble import COMBINE
    from arena.serving.projection import check_time_limit
    from arena.serving.rules import parse_rules

    allowed = backend_precisions()  # from the backend declarations, as arena-infer checks them
    one_of("--backend", backend, allowed)
    one_of(f"--precision for backend {backend}", precision, allowed[backend])
    one_of("--tta", tta, ("none", "swap"))
    one_of("--combine", combine, COMBINE)
    at_least("--max-tokens", max_tokens, 1)
    parse_rules(rules)
    options = ["--backend", backend, "--precision", precision, "--tta", tta, "--combine", combine]
    if not calibrate:
        options.append("--no-calibrate")
    if weights is not None:
        parts = weights.split(",")
        try:
            [float(w) for w in parts]
        except ValueError:
            raise ConfigError(f"--weights takes comma-separated numbers such as 0.6,0.4; got {weights!r}") from None
        if len(parts) != n_models:
            raise ConfigError(f"--weights has {len(parts)} numbers for {n_models} models; give one per MODEL")
        options += ["--weights", weights]
    for flag, value in (("--devices", devices), ("--rules", rules), ("--max-tokens", max_tokens)):
        if value is not None:
            options += [flag, str(value)]
    if time_limit is not None and time_limit.lower() != "none":
        check_time_limit(time_limit, time_limit_action)
        options += ["--time-limit", time_limit, "--time-limit-action", time_limit_action]
    return options


def run_pack(models: list[Path], out: Path, *, dataset_id: str | None = None, title: str = "",
             license: str = "CC0-1.0", target: str = "kaggle-cpu", target_freeze: Path | None = None,
             python_version: str | None = None, platform: str | None = None, extras: tuple[str, ...] = (),
             with_torch: bool = False, find_links: list[Path] | None = None, no_index: bool = False,
             infer_options: list[str] | None = None, max_size_gb: float = 200.0, overwrite: bool = False) -> dict:
    """Check everything, then write the bundle; the summary as printed in JSON."""
    from arena.pack.bundle import PackConfig, dataset_id_for, write_bundle
    from arena.pack.target import load_target

    known_extras = ("openvino", "gpu")
    for name in extras:
        if name not in known_extras:
            raise ConfigError(f"--extra must be one of {', '.join(known_extras)}; got {name!r}")
    resolved = load_target(target_freeze, default=target, python=python_version, platform=platform)
    options = list(infer_options or [])
    backend = options[options.index("--backend") + 1] if "--backend" in options else "auto"
    for name, extra in (("openvino", "openvino"), ("tensorrt", "gpu")):
        if backend == name and not resolved.has(name) and extra not in extras:
            raise ConfigError(f"--backend {name}: the target ({resolved.name}) has no {name}; pass --extra {extra} "
                              "to pack it")
    sources: list[str] = ["--no-index"] if no_index else []
    for folder in find_links or []:
        if not Path(folder).is_dir():
            raise ConfigError(f"--find-links {folder} is not a folder; pass a folder of wheels")
        sources += ["--find-links", str(Path(folder).resolve())]
    config = PackConfig(models=[Path(m) for m in models], out=Path(out), dataset_id=dataset_id_for(dataset_id, out),
                        target=resolved, title=title, license=license, infer_options=options,
                        extras=extras, with_torch=with_torch, sources=sources, overwrite=overwrite,
                        max_size_gb=max_size_gb)
    return write_bundle(config)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
