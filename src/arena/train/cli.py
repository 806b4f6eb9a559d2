"""``arena-train``: fine-tune a 3-way preference classifier on train.csv."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from arena.cli.app import encoder_config, run_app, setup_logging
from arena.cli.options import attention_help
from arena.errors import ConfigError, cli_errors
from arena.serving.backends.torch import DTYPES
from arena.train.config import HEADS

app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)


@app.command(epilog="Examples:\n\n  arena-train --data ../shared/data/arena/lmsys_kaggle --output runs/small\n\n"
             "  arena-train --model DIR --folds 5 --epochs 2 --max-length 256 --output runs/cv\n\n"
             "  arena-train --model google/gemma-2-9b-it --lora-r 64 --lora-alpha 128 --lr 1e-4 --max-length 1024 "
             "--batch-size 4 --grad-accum 4 --gradient-checkpointing --load-in-4bit --output runs/gemma\n\n"
             "  torchrun --nproc-per-node 2 -m arena.train.cli --data train.csv --output runs/ddp\n\n"
             "  torchrun --nproc-per-node 4 -m arena.train.cli --model DIR --lora-r 0 --fsdp --output runs/fsdp")
@cli_errors
def train(
    data: Annotated[str | None, typer.Option(help="train.csv or its folder (default: ../shared/data/arena/"
                                             "lmsys_kaggle if present, else llm-classification-finetuning/)")] = None,
    model: Annotated[str, typer.Option(help="Hub name or local folder (or a config.json with --random-init)")] =
    "microsoft/deberta-v3-small",
    output: Annotated[str, typer.Option(help="Checkpoint folder to write")] = "runs/model",
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer folder, if not the model's")] = None,
    random_init: Annotated[bool, typer.Option(help="Start from random weights built from --model's config.json")]
    = False,
    max_length: Annotated[int | None, typer.Option(help="Tokens per row (default: 512 for encoders, 1,024 for "
                                                   "decoders, within the model's limit)")] = None,
    strategy: Annotated[str, typer.Option(help="segments (per-segment budget) or notebook (cut at the end)")] =
    "segments",
    shares: Annotated[str, typer.Option(help="Token shares of prompt,A,B")] = "0.2,0.4,0.4",
    head_fraction: Annotated[float, typer.Option(help="Share of a cut turn kept from its start")] = 0.5,
    batch_size: Annotated[int, typer.Option(help="Rows per micro-batch")] = 8,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per optimizer step")] = 1,
    epochs: Annotated[float, typer.Option()] = 3.0,
    lr: Annotated[float, typer.Option(help="Peak learning rate")] = 2e-5,
    weight_decay: Annotated[float, typer.Option()] = 0.01,
    warmup_ratio: Annotated[float, typer.Option()] = 0.1,
    scheduler: Annotated[str, typer.Option(help="linear, cosine or constant")] = "linear",
    precision: Annotated[str, typer.Option(help="auto (the GPU's: bf16 from sm80 on, fp16 on a T4; fp32 on CPU), "
                                                "fp32, bf16, fp16")] = "auto",
    seed: Annotated[int, typer.Option()] = 42,
    max_rows: Annotated[int | None, typer.Option(help="Use only the first N rows (quick runs)")] = None,
    val_fraction: Annotated[float, typer.Option(help="Hold-out share when --folds is not given")] = 0.2,
    folds: Annotated[int | None, typer.Option(help="K-fold cross-validation")] = None,
    fold: Annotated[int | None, typer.Option(help="Train only this fold (0-based); default all folds")] = None,
    eval_steps: Annotated[int | None, typer.Option(help="Evaluate every N steps (always at epoch end)")] = None,
    save_steps: Annotated[int | None, typer.Option(help="Save resumable state every N steps")] = None,
    early_stopping: Annotated[int | None, typer.Option(help="Patience in evaluations")] = None,
    swap_augment: Annotated[bool, typer.Option(help="Add A/B-swapped copies of the training rows (doubles the "
                                              "training rows; part of the default recipe)")] = True,
    head: Annotated[str, typer.Option(help="hybrid (pooled encoder output + hand-crafted features, started from "
                                      "their logistic regression; encoders only) or hf (the model's own "
                                      "classification head; decoders: last-token pooling); auto: hybrid for "
                                      "encoders, hf for decoders")] = "auto",
    head_lr: Annotated[float, typer.Option(help="Learning rate of the hybrid head's own layers")] = 2e-4,
    calibrate: Annotated[bool, typer.Option(help="Fit a temperature on out-of-fold logits")] = True,
    compile: Annotated[bool, typer.Option(help="torch.compile the model (GPU)")] = False,
    attention: Annotated[str, typer.Option(help=attention_help())] = "auto",
    resume: Annotated[bool, typer.Option(help="Continue the interrupted run in --output (same settings and data; "
                                         "a missing or empty --output is an error)")] = False,
    resume_or_start: Annotated[bool, typer.Option(help="Like --resume, but start a new run when --output holds "
                                                  "nothing to resume (for jobs that may be restarted)")] = False,
    overwrite: Annotated[bool, typer.Option(help="Delete the earlier run in --output (finished or not) and train "
                                            "from the start")] = False,
    keep_state: Annotated[bool, typer.Option(help="Keep the resumable state after success")] = False,
    max_steps: Annotated[int | None, typer.Option(help="Stop after N optimizer steps")] = None,
    soft_labels: Annotated[str | None, typer.Option(
        help="Teacher probabilities keyed by id (an oof.csv, or arena-infer --save-logits output) to train on")]
    = None,
    soft_weight: Annotated[float, typer.Option(help="Teacher share of a labelled row's target (0..1)")] = 1.0,
    extra: Annotated[list[str] | None, typer.Option(
        help="Unlabelled pairs (test layout) trained on their --soft-labels; never in validation. Repeat for several "
             "files; rows of the training file (same id, or same prompt and responses) are dropped with a count")]
    = None,
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank; 0: full fine-tuning (default: 16 for decoders, "
                                               "0 for encoders)")] = None,
    lora_alpha: Annotated[float | None, typer.Option(help="LoRA alpha (update scale alpha/r); default 2 x r")] = None,
    lora_dropout: Annotated[float, typer.Option(help="Dropout on the LoRA input")] = 0.05,
    lora_targets: Annotated[str, typer.Option(help="all-linear or a comma list of module names (q_proj,v_proj)")]
    = "all-linear",
    gradient_checkpointing: Annotated[bool, typer.Option(help="Recompute activations in backward (less memory)")]
    = False,
    load_in_4bit: Annotated[bool, typer.Option(help="Frozen base in 4-bit NF4 (QLoRA; bitsandbytes, GPU)")] = False,
    load_in_8bit: Annotated[bool, typer.Option(help="Frozen base in 8-bit (bitsandbytes, GPU)")] = False,
    merge: Annotated[bool, typer.Option(help="Merge the LoRA adapter into the base and save a plain checkpoint")]
    = False,
    fsdp: Annotated[bool, typer.Option(help="Shard full fine-tuning (--lora-r 0) with fully_shard, for a model too "
                                       "big for one GPU: torchrun --nproc-per-node N -m arena.train.cli ...")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Fine-tune a Hugging Face encoder (DeBERTa-v3 by default) or decoder LLM (Gemma-2, Llama, Mistral, Qwen-2;
    LoRA) to predict model_a / model_b / tie."""
    setup_logging(verbose)
    given = dict(locals())
    resume = resume or resume_or_start
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 owns the output folder
        check_train_request(data=data, model=model, output=output, tokenizer=tokenizer, random_init=random_init,
                            max_length=max_length, numbers={k: given[k] for k in NUMBERS},
                            scheduler=scheduler, precision=precision, head=head, resume=resume,
                            overwrite=overwrite, resume_or_start=resume_or_start, attention=attention,
                            lora_r=lora_r, compile=compile, fsdp=fsdp)
    from arena.cli.app import on_interrupt
    from arena.cli.safety import interrupted_train_note

    on_interrupt(lambda: interrupted_train_note(output))
    from arena.train.loop import TrainConfig, run_training

    if max_length is None:
        from arena.train.model_options import default_length

        max_length = default_length(model, random_init)
    settings = {k: v for k, v in given.items() if k in TrainConfig.__dataclass_fields__}
    settings.update(encoder=encoder_config(max_length, strategy, shares, head_fraction), resume=resume,
                    extra=tuple(extra or ()))
    cfg = TrainConfig(**settings)
    report(run_training(cfg), output)


def report(summary: dict[str, Any], output: str) -> None:
    """The one-line summary and, last, one line of JSON (nothing on torchrun's ranks other than 0, which return an
    empty summary: rank 0 speaks for the run)."""
    if not summary:
        return
    if summary.get("trained") is False:
        typer.echo(f"done: saved the untrained model ({summary['rows']} rows read, 0 training steps: --max-steps 0); "
                   f"checkpoint in {output}")
        typer.echo(json.dumps({k: summary[k] for k in ("trained", "steps", "output")}))
        return
    extra = summary.get("extra_rows")
    dropped = sum(extra["dropped"].values()) if extra else 0
    typer.echo(
        f"done: {summary['validation_rows']} validation rows, log loss {summary['oof_log_loss']:.4f} "
        f"(calibrated {summary['oof_log_loss_calibrated']:.4f}, T={summary['temperature']:.3f}; "
        f"uniform {summary['uniform_log_loss']:.4f}, prior {summary['prior_log_loss']:.4f}), "
        f"accuracy {summary['oof_accuracy']:.3f}"
        + (f"; {extra['kept']} extra rows ({dropped} dropped: in the training file or repeated)" if extra else "")
        + (f"; attention {summary['attention']}" if summary.get("attention") else "")
        + f"; checkpoint in {output}")
    line = {k: summary[k] for k in ("oof_log_loss", "oof_accuracy", "temperature", "attention") if k in summary}
    if extra:
        line["extra_rows"], line["extra_rows_dropped"] = extra["kept"], dropped
    typer.echo(json.dumps(line))


NUMBERS = ("batch_size", "grad_accum", "epochs", "lr", "weight_decay", "warmup_ratio", "head_lr", "max_rows",
           "val_fraction", "folds", "fold", "eval_steps", "save_steps", "early_stopping", "max_steps")
"""The numeric options :func:`check_train_request` checks for range."""
SCHEDULERS = ("linear", "cosine", "constant")
PRECISIONS = ("auto", *DTYPES)
"""Training's autocast precisions: the torch backend's (one list, :data:`arena.serving.backends.torch.DTYPES`)."""


def check_train_request(*, data: str | None, model: str, output: str, tokenizer: str | None, random_init: bool,
                        max_length: int, numbers: dict[str, Any], scheduler: str, precision: str, head: str,
                        resume: bool, overwrite: bool, resume_or_start: bool = False, attention: str = "auto",
                        lora_r: int | None = None, compile: bool = False, fsdp: bool = False) -> None:
    """Every option and path checked before any data is read, model loaded or file written."""
    from arena.cli.options import at_least, existing_folder, one_of, positive, within
    from arena.cli.safety import check_train_output
    from arena.data import check_layout, resolve_csv
    from arena.machine.devices import torch_gpus
    from arena.machine.gpu import check_bf16
    from arena.models.attention_choices import ATTENTIONS, check_attention
    from arena.models.modeling import check_max_length, check_model_folder, is_local
    from arena.train.fsdp import check_launch

    n = numbers
    for flag in ("batch_size", "grad_accum", "max_rows", "eval_steps", "save_steps", "early_stopping"):
        at_least("--" + flag.replace("_", "-"), n[flag], 1)
    for flag in ("epochs", "lr", "head_lr"):
        positive("--" + flag.replace("_", "-"), n[flag])
    at_least("--weight-decay", n["weight_decay"], 0)
    at_least("--max-steps", n["max_steps"], 0)
    within("--warmup-ratio", n["warmup_ratio"], 0, 1)
    within("--val-fraction", n["val_fraction"], 0, 1, low_open=True, high_open=True)
    at_least("--folds", n["folds"], 2)
    if n["fold"] is not None and n["folds"] is None:
        raise ConfigError("--fold needs --folds (the number of folds it is one of)")
    if n["fold"] is not None and not 0 <= n["fold"] < n["folds"]:
        raise ConfigError(f"--fold {n['fold']} is out of range for --folds {n['folds']} (0..{n['folds'] - 1})")
    one_of("--scheduler", scheduler, SCHEDULERS)
    one_of("--precision", precision, PRECISIONS)
    if precision == "fp16" and not torch_gpus():
        raise ConfigError("--precision fp16 needs a CUDA GPU and this machine has none; use fp32, bf16 or auto")
    check_bf16(precision, "cuda")  # training runs on the GPU wherever PyTorch sees one
    check_launch(fsdp)
    one_of("--head", head, HEADS)
    if random_init:
        if not tokenizer:
            raise ConfigError("--random-init builds weights from a config.json and needs --tokenizer")
        config = Path(model)
        if not (config.is_file() or (config / "config.json").is_file()):
            raise ConfigError(f"--model {model}: --random-init needs a config.json file (or a folder holding one)")
    elif is_local(model):
        check_model_folder(model)
    if max_length is not None:  # else the model's own default (arena.train.model_options.default_length)
        check_max_length(_model_config(model, random_init), max_length)
    one_of("--attention", attention, ATTENTIONS)
    if attention != "auto":
        check_attention(attention, getattr(_model_config(model, random_init), "model_type", None),
                        lora=bool(lora_r), compile=compile)
    if tokenizer is not None and is_local(tokenizer):
        existing_folder("--tokenizer", tokenizer, "the folder that holds the tokenizer files")
    path = resolve_csv(data, "train.csv")
    check_layout(path, labelled=True)
    check_train_output(output, resume=resume, overwrite=overwrite, resume_or_start=resume_or_start,
                       inputs={"training data": path, "model": model, "tokenizer": tokenizer})


def _model_config(model: str, random_init: bool) -> Any:
    from arena.models.modeling import load_model_config

    if not random_init:
        return load_model_config(model)
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--model {model} is not a config.json transformers can read: {exc}") from None


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
