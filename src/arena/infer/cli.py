"""``arena-infer``: score test.csv and write a Kaggle submission."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Annotated

import typer

from arena.cli.app import run_app, setup_logging
from arena.cli.options import CALIBRATE_HELP, attention_help, backend_help, precision_help
from arena.errors import ConfigError, cli_errors

log = logging.getLogger("arena.infer")
app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)


@app.command(epilog="Examples:\n\n  arena-infer test.csv --model runs/export --out submission.csv\n\n"
             "  arena-infer test.csv --model runs/model --backend torch --tta swap\n\n"
             "  arena-infer test.csv --model runs/export --precision int8 --max-tokens 16384")
@cli_errors
def infer(
    test_csv: Annotated[Path, typer.Argument(help="Kaggle test.csv (id, prompt, response_a, response_b)")],
    model: Annotated[list[Path], typer.Option(
        help="arena-train checkpoint or arena-export folder; a k-fold output or its export scores every fold; "
             "repeat --model to blend several models")],
    out: Annotated[Path, typer.Option(help="Submission CSV to write (atomically)")] = Path("submission.csv"),
    backend: Annotated[str, typer.Option(help=backend_help())] = "auto",
    precision: Annotated[str, typer.Option(help=precision_help() + " (torch 4bit/8bit: decoders on a GPU)")]
    = "auto",
    calibrate: Annotated[bool, typer.Option("--calibrate/--no-calibrate", help=CALIBRATE_HELP)] = True,
    tta: Annotated[str, typer.Option(help="none or swap (score A/B-swapped too and average)")] = "none",
    policy: Annotated[str, typer.Option(help="sorted (token budget), notebook or padded")] = "sorted",
    rules: Annotated[str | None, typer.Option(help="Post-processing: identical-tie, empty-loses (comma list)")]
    = None,
    max_tokens: Annotated[int | None, typer.Option(
        help="Token budget per batch (rows x padded length); default 2 rows of max length on CPU, 64 on GPU")] = None,
    batch_size: Annotated[int, typer.Option(help="Max rows per batch")] = 64,
    chunk_rows: Annotated[int, typer.Option(help="Rows read, encoded and scored at a time")] = 8192,
    threads: Annotated[int | None, typer.Option(help="CPU threads for the model")] = None,
    encode_workers: Annotated[int, typer.Option(help="Tokenizer worker processes (0: one background thread)")]
    = 0,
    compile: Annotated[bool, typer.Option(help="torch.compile (torch backend, GPU)")] = False,
    attention: Annotated[str, typer.Option(help=attention_help())] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    devices: Annotated[str | None, typer.Option(
        help="Several devices, one process each: cuda:0,cuda:1 (or a count of GPUs; cpu,cpu on a CPU)")] = None,
    split: Annotated[str, typer.Option(
        help="With --devices: copies (one copy of the model per device), layers (one decoder checkpoint split by "
             "layers across the GPUs) or auto (layers only where one GPU cannot hold the model)")] = "auto",
    weights: Annotated[str | None, typer.Option(
        help="Blend weights, one per --model (default: fitted on their oof.csv files, else equal)")] = None,
    combine: Annotated[str, typer.Option(help="How members are combined: probs (mean) or geometric")] = "probs",
    save_logits: Annotated[Path | None, typer.Option(
        help="Also write id, probabilities and logits per row: a file arena-train --soft-labels accepts")] = None,
    time_limit: Annotated[str | None, typer.Option(
        help="Project the run time from a length-stratified sample first and stop if it exceeds this (9h, 90m)")]
    = None,
    time_limit_action: Annotated[str, typer.Option(help="error (stop before the run) or warn")] = "error",
    allow_partial: Annotated[bool, typer.Option(
        help="Score a fold ensemble that has folds missing or unfinished with the folds that finished (refused "
             "without it); every output then says 'k of N folds'")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Score every row of TEST_CSV and write one probability row per id, in the file's order."""
    setup_logging(verbose)
    summary = run_infer(test_csv, model, out, backend=backend, precision=precision, tta=tta,
                        policy=policy, max_tokens=max_tokens, batch_size=batch_size, chunk_rows=chunk_rows,
                        threads=threads, encode_workers=encode_workers, compile=compile, device=device,
                        devices=devices, split=split, rules=rules, weights=parse_weights(weights, len(model)),
                        attention=attention, combine=combine, save_logits=save_logits, allow_partial=allow_partial,
                        time_limit=time_limit, time_limit_action=time_limit_action, calibrate=calibrate)
    if "layer_split" in summary:
        typer.echo(summary["layer_split"])
    if "projection" in summary:
        typer.echo(summary["projection"]["line"])
    typer.echo(f"wrote {summary['rows']} rows to {out} with {summary['backend']} in {summary['wall_s']:.2f} s: "
               f"{summary['rows_per_s']:.1f} rows/s end to end, {summary['model_rows_per_s']:.1f} rows/s model "
               f"only (calibration {summary['calibration']['seconds']:.2f} s, encode {summary['encode_s']:.2f} s, "
               f"model {summary['model_s']:.2f} s, "
               f"write {summary['write_s']:.2f} s; padding efficiency {summary['padding_efficiency']:.2f})"
               + (f"; attention {summary['attention']}" if summary.get("attention") else "")
               + "".join(f"; {m}: {d}" for m, d in summary.get("folds", {}).items()))
    typer.echo(json.dumps(summary))


def check_infer_request(test_csv: Path, models: Path | list[Path], out: Path, *, backend: str, precision: str,
                        tta: str | bool, policy: str, max_tokens: int | None, batch_size: int, chunk_rows: int,
                        threads: int | None,
                        encode_workers: int, compile: bool, device: str,
                        devices: str | None, save_logits: Path | None = None, weights: list[float] | None = None,
                        allow_partial: bool = False, attention: str = "auto") -> tuple[str, list[str] | None]:
    """Every option and path checked before a model is loaded: return the device and the device list (None for
    one device; ``--devices`` with one name is that device, not ignored). A fold ensemble with folds missing or
    unfinished is refused unless ``allow_partial`` (:func:`arena.serving.ensemble.check_complete`)."""
    models = [Path(models)] if isinstance(models, Path | str) else [Path(m) for m in models]
    from arena.cli.options import (
        at_least,
        check_attention_folders,
        check_precision,
        existing_file,
        existing_folder,
        one_of,
    )
    from arena.cli.safety import check_submission_out
    from arena.data import check_layout
    from arena.machine.devices import check_device, parse_devices
    from arena.serving.backends import backend_names
    from arena.serving.batching import POLICIES
    from arena.serving.ensemble import check_complete
    from arena.serving.folder import read_folder

    one_of("--backend", backend, backend_names())
    if not isinstance(tta, bool):
        one_of("--tta", tta, ("none", "swap"))
    one_of("--policy", policy, POLICIES)
    at_least("--max-tokens", max_tokens, 1)
    at_least("--batch-size", batch_size, 1)
    at_least("--chunk-rows", chunk_rows, 1)
    at_least("--threads", threads, 1)
    at_least("--encode-workers", encode_workers, 0)
    if compile and backend not in ("auto", "torch"):
        raise ConfigError(f"--compile applies to the torch backend, not --backend {backend}")
    device = check_device(device, "--device")
    shards = parse_devices(devices)
    for each in shards or [device]:  # the backend's own checks: precision it serves, a GPU it can use
        check_precision("--precision", backend, precision, each)
    if shards is not None and device != "auto":
        raise ConfigError("pass either --device (one device) or --devices (several), not both")
    if shards is not None and len(shards) == 1:
        device, shards = shards[0], None
    existing_file("TEST_CSV", test_csv, "the test CSV to score (e.g. test.csv)")
    check_layout(test_csv, labelled=False)
    for model in models:
        existing_folder("--model", model, "the arena-train checkpoint or arena-export folder")
        folds = check_complete(model, allow_partial=allow_partial)
        read_folder(model)  # what it is (checkpoint, export, foreign ONNX, fold ensemble), or one error line
        for checkpoint in (folds.members if folds is not None else [model]):
            check_lora_base(checkpoint)
        check_submission_out(out, test_csv=test_csv, model=model)
    check_attention_folders(attention, backend, models, compile=compile)
    if save_logits is not None:
        check_logits_out(Path(save_logits), out=out, test_csv=test_csv, models=models)
    if weights is not None:
        check_weights(weights, len(models), ",".join(map(str, weights)))
    return device, shards


def check_lora_base(folder: Path) -> None:
    """A LoRA checkpoint's base is there and is the one it was trained on, before any model loads. (An export's
    ``arena.json`` may still name the adapter it was merged from: exports are skipped.)"""
    from arena.artifacts import MANIFEST
    from arena.models.modeling import read_meta

    is_checkpoint = (folder / "config.json").is_file() and not (folder / MANIFEST).is_file()
    head = read_meta(folder).head if is_checkpoint else None
    if head is None:
        return
    from arena.models.lora import KIND, check_adapter  # imports torch: only for a checkpoint with a head

    if head.get("kind") == KIND:
        check_adapter(folder, head)


def check_logits_out(path: Path, *, out: Path, test_csv: Path, models: list[Path]) -> None:
    """``--save-logits``: a new file, or one arena-infer wrote as ``--save-logits`` before (recognised by its
    header); never --out, an input, a folder or a file inside a model folder. Every refusal names --save-logits."""
    from arena.cli.safety import COMPRESSED_SUFFIXES, check_not_input, check_writable
    from arena.infer.submission import LOGITS_HEADER, is_logits_file

    if path.name.lower().endswith(COMPRESSED_SUFFIXES):
        raise ConfigError(f"--save-logits {path}: arena-infer writes a plain CSV; name it .csv (e.g. logits.csv)")
    if path.resolve() == out.resolve():
        raise ConfigError(f"--save-logits {path} is also --out; name another file for the logits")
    for model in models:
        check_not_input(path, "--save-logits", {"input CSV": test_csv, "model folder": model}, folder=False)
    if path.is_dir():
        raise ConfigError(f"--save-logits {path} is a folder; --save-logits takes a file, e.g. {path / 'logits.csv'}")
    if path.exists() and path.stat().st_size > 0 and not is_logits_file(path):
        raise ConfigError(f"--save-logits {path} exists and is not a logits file arena-infer wrote (its first line "
                          f"is not {','.join(LOGITS_HEADER)}); choose another --save-logits or remove the file "
                          "yourself")
    check_writable(path, "--save-logits", in_parent=True)


def check_weights(values: list[float], count: int, shown: str) -> None:
    """Blend weights, one per --model: finite, non-negative, with a finite positive sum (``nan`` or ``inf`` would
    load and score every model before failing as a broken probability; ``1e308,1e308`` overflows the sum).
    ``shown``: what the user typed, echoed in the error."""
    if len(values) != count:
        raise ConfigError(f"--weights {shown} has {len(values)} numbers for {count} --model folders; give one each")
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise ConfigError(f"--weights {shown}: every weight must be a finite number >= 0")
    total = sum(values)
    if not (math.isfinite(total) and total > 0):
        raise ConfigError(f"--weights {shown}: the weights must have a positive, finite sum (they sum to {total})")


def parse_weights(text: str | None, count: int) -> list[float] | None:
    """``--weights`` as numbers, checked (:func:`check_weights`) before anything is read or loaded."""
    if text is None:
        return None
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"--weights takes comma-separated numbers such as 0.6,0.4; got {text!r}") from None
    check_weights(values, count, text)
    return values


def run_infer(test_csv: Path, model: Path | list[Path], out: Path, *, backend: str = "auto", precision: str = "auto",
              tta: bool | str = False, policy: str = "sorted", max_tokens: int | None = None, batch_size: int = 64,
              chunk_rows: int = 8192, threads: int | None = None, encode_workers: int = 0, compile: bool = False,
              device: str = "auto", devices: str | None = None, split: str = "auto", rules: str | None = None,
              weights: list[float] | None = None, combine: str = "probs", save_logits: Path | None = None,
              allow_partial: bool = False, time_limit: str | None = None, time_limit_action: str = "error",
              calibrate: bool = True, attention: str = "auto") -> dict:
    """Score ``test_csv`` into ``out``; the summary arena-infer prints. ``calibrate``: with ``--backend auto`` on a
    CPU, settle the choice by timing the export's checked variants on this file's first rows once per machine
    (False: the cached choice, else the declared order; :mod:`arena.serving.calibration`). The calibration's
    seconds are part of ``wall_s``. ``attention``: the torch backend's ``--attention``."""
    from tqdm.auto import tqdm

    from arena.cli.safety import warn_if_unfinished
    from arena.data import iter_records
    from arena.infer.submission import predictions_writer, submission_writer
    from arena.serving.ensemble import fold_set
    from arena.serving.rules import parse_rules
    from arena.serving.scoring import ScoreConfig, Timings

    models = [Path(model)] if isinstance(model, Path | str) else [Path(m) for m in model]
    test_csv, out = Path(test_csv), Path(out)
    device, shards = check_infer_request(
        test_csv, models, out, backend=backend, precision=precision, tta=tta, policy=policy, max_tokens=max_tokens,
        batch_size=batch_size, chunk_rows=chunk_rows, threads=threads, encode_workers=encode_workers,
        compile=compile, device=device, devices=devices, save_logits=save_logits, weights=weights,
        allow_partial=allow_partial, attention=attention)
    from arena.serving.layer_split import choose_split
    from arena.serving.projection import check_time_limit

    limit_s = check_time_limit(time_limit, time_limit_action)
    plan = choose_split(models, shards, backend=backend, precision=precision, split=split, compile=compile)
    started = time.perf_counter()
    tta = tta == "swap" if isinstance(tta, str) else tta
    folds = {str(m): f.describe() for m in models if (f := fold_set(m)) is not None}
    for m in models:
        if str(m) not in folds:  # an ensemble's folds were judged one by one (check_complete)
            warn_if_unfinished(m)
    config = ScoreConfig(policy=policy, batch_size=batch_size, max_tokens=max_tokens, chunk_rows=chunk_rows,
                         tta=tta, encode_workers=encode_workers, rules=parse_rules(rules))
    calibration = _calibration_request(test_csv, config, backend=backend, calibrate=calibrate)
    scorer, description, reason, close, calibrated = _open_scorer(
        models, config, backend=backend, precision=precision, threads=threads, compile=compile, device=device,
        shards=shards, weights=weights, combine=combine, calibration=calibration, attention=attention, plan=plan)
    log.info("backend %s: %s", description, reason)
    timings = Timings()
    projection = None
    try:
        if limit_s is not None:
            projection = _project(scorer, test_csv, limit_s, time_limit_action, started)
        t0 = time.perf_counter()
        with submission_writer(out) as writer, predictions_writer(save_logits) as extra, \
                tqdm(desc="score", unit="row", disable=None) as bar:
            for records, probs in scorer.score_chunks(
                    iter_records(test_csv, labelled=False, chunk_rows=chunk_rows), timings):
                tw = time.perf_counter()
                writer.write([r.id for r in records], probs)
                extra.write([r.id for r in records], probs)
                timings.write_s += time.perf_counter() - tw
                bar.update(len(records))
                bar.set_postfix(rows_s=f"{timings.rows / max(time.perf_counter() - t0, 1e-9):.1f}")
            timings.wall_s = time.perf_counter() - t0 + calibrated["seconds"]
            writer.commit(timings.rows)
            extra.commit(timings.rows)
    finally:
        close()
    return {"backend": description, "reason": reason, "threads": getattr(scorer.runner, "threads", None),
            "attention": attention_ran(scorer),
            "models": len(scorer.members), **({"folds": folds} if folds else {}), "tta": tta,
            "policy": policy, "rules": list(config.rules), "max_tokens": scorer.executor.budget,
            "calibration": calibrated, **timings.summary(), **({"projection": projection} if projection else {}),
            **({"layer_split": plan.line()} if plan else {})}


def _calibration_request(test_csv: Path, config, *, backend: str, calibrate: bool):
    """What ``--backend auto`` needs to settle a CPU choice: the file's first rows (their length mix) and the run's
    batch settings. A named backend reads no rows (it is never measured)."""
    from contextlib import closing

    from arena.data import iter_records
    from arena.serving.calibration import SAMPLE_ROWS, CalibrationRequest

    rows: list = []
    if backend == "auto":
        with closing(iter_records(test_csv, labelled=False, chunk_rows=SAMPLE_ROWS)) as chunks:
            rows = next(chunks, [])
    return CalibrationRequest(tuple(rows), calibrate, config.policy, config.batch_size, config.max_tokens)


def attention_ran(scorer) -> str | None:
    """Which attention the torch models ran, read after the run (``auto`` decides on the first batch); None for
    exported graphs."""
    labels = [label for m in scorer.members if (label := getattr(m.executor.backend, "attention_label", None))]
    return "; ".join(dict.fromkeys(labels)) or None


def _project(scorer, test_csv: Path, limit_s: float, action: str, started: float) -> dict:
    """``--time-limit``: project the run from a sample (logged at once), stop or warn when over the limit."""
    from arena.data import read_test
    from arena.serving.projection import enforce_limit, project_scorer

    projection = project_scorer(scorer, read_test(test_csv), limit_s=limit_s, started=started)
    log.info("%s", projection.line())
    enforce_limit(projection, action)
    return {**projection.to_dict(), "line": projection.line()}


def _open_scorer(models: list[Path], config, *, backend: str, precision: str, threads: int | None, compile: bool,
                 device: str, shards: list[str] | None, weights: list[float] | None, combine: str, calibration=None,
                 attention: str = "auto", plan=None):
    """The scorer for one model or an ensemble; (scorer, description, why this backend, close, what calibration
    settled: the CPU, its seconds and each member's record). ``--devices`` is never calibrated: its workers each
    open the declared choice. ``plan``: one checkpoint split by layers across the GPUs of ``shards``
    (:mod:`arena.serving.layer_split`), in this process."""
    from arena.machine.cpu import cpu_kind
    from arena.serving.ensemble import member_folders
    from arena.serving.loading import LoadedEnsemble, open_model, open_models
    from arena.serving.scoring import scorer_for
    from arena.serving.sharded import open_sharded

    if plan is not None:
        ensemble = LoadedEnsemble([open_model(models[0], backend="torch", precision=precision, threads=threads,
                                              device=plan.devices[0], devices=plan.devices,
                                              device_map=plan.device_map, attention=attention)], [1.0], combine,
                                  "single model")
        shards = None  # one process: nothing to close but the scorer
    elif shards is None:
        ensemble = open_models(models, weights=weights, combine=combine, backend=backend, precision=precision,
                               threads=threads, compile=compile, device=device, calibration=calibration,
                               attention=attention)
    else:  # the workers load the model, the parent does not (cuda:0 would hold it twice)
        if len(models) > 1 or member_folders(models[0]):
            raise ConfigError("--devices runs one model per device; score an ensemble on one device at a time")
        ensemble = LoadedEnsemble([open_sharded(models[0], shards, backend=backend, precision=precision,
                                                threads=threads, attention=attention)], [1.0], combine,
                                  "single model")
    first = ensemble.members[0]
    scorer = scorer_for(ensemble, config)

    def close() -> None:
        scorer.close()
        if shards is not None:
            first.runner.close()

    records = [{"model": str(m.folder), **m.choice.calibration.to_dict()} for m in ensemble.members
               if m.choice.calibration is not None]
    calibrated = {"cpu": cpu_kind(), "seconds": round(sum(r["seconds"] for r in records), 3), "members": records}
    return scorer, ensemble.description, first.choice.reason, close, calibrated


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
