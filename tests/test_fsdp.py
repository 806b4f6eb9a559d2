"""Issue 26, FSDP: ``arena-train --fsdp`` under torchrun shards full fine-tuning with ``fully_shard`` (every
transformer layer, then the root), saves whole weights from rank 0 only, and is one ``error:`` line when it is not
launched by torchrun or asked to shard what it does not.

The sharded run is checked on two gloo CPU processes against the same run under DistributedDataParallel: the same
gradients (averaged over the same batches), clipped by the same global norm, so the same weights up to the order of
floating-point sums. NCCL on GPUs is verified only on a GPU.
"""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest

from arena.errors import ConfigError
from tests.conftest import TOKENIZER, TRAIN_CSV, tiny_decoder_config
from tests.test_train import torchrun_train

TORCHRUN = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def test_fsdp_needs_torchrun_with_two_processes_or_more():
    from arena.train.fsdp import check_launch

    check_launch(False, {})
    check_launch(True, TORCHRUN)
    with pytest.raises(ConfigError, match=r"not started by torchrun \(RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, "
                                          r"MASTER_PORT not set\): launch it as torchrun --nproc-per-node N"):
        check_launch(True, {})
    with pytest.raises(ConfigError, match="MASTER_PORT not set"):
        check_launch(True, {k: v for k, v in TORCHRUN.items() if k != "MASTER_PORT"})
    with pytest.raises(ConfigError, match="WORLD_SIZE 1: one process has nothing to shard"):
        check_launch(True, {**TORCHRUN, "WORLD_SIZE": "1"})


def test_fsdp_refuses_what_it_does_not_shard():
    from arena.train.config import TrainConfig
    from arena.train.model_options import resolve_model_options

    decoder = tiny_decoder_config("llama")
    with pytest.raises(ConfigError, match=r"--fsdp shards full fine-tuning \(--lora-r 0\); LoRA \(--lora-r 16, the "
                                          "default for decoders\\)"):
        resolve_model_options(TrainConfig(fsdp=True), decoder)
    with pytest.raises(ConfigError, match="--compile"):
        resolve_model_options(TrainConfig(fsdp=True, lora_r=0, compile=True), decoder)
    assert resolve_model_options(TrainConfig(fsdp=True, lora_r=0), decoder).lora_r == 0


def test_fsdp_outside_torchrun_is_one_error_line(monkeypatch, capsys, tmp_path, tiny_config):
    from tests.test_misuse_models import refused

    for name in TORCHRUN:
        monkeypatch.delenv(name, raising=False)
    refused(monkeypatch, capsys, tmp_path, "train", ["--data", str(TRAIN_CSV), "--model", str(tiny_config),
                                                     "--random-init", "--tokenizer", str(TOKENIZER), "--fsdp",
                                                     "--output", "run"], "--fsdp", "torchrun --nproc-per-node N")


def test_fsdp_on_two_gloo_ranks_trains_what_ddp_trains(tmp_path, tiny_config):
    """The same run sharded and replicated: equal weights (to float rounding) in the checkpoint and in the
    resumable state, whole tensors written by rank 0 alone, and the same validation logits."""
    from safetensors.torch import load_file

    runs = {}
    for name, extra in (("fsdp", ("--fsdp",)), ("ddp", ())):
        # the default head (hybrid): encoder layers sharded one by one, head at the root
        proc = torchrun_train(tmp_path / name, tiny_config, "--keep-state", *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = tmp_path / name
    fsdp, ddp = runs["fsdp"], runs["ddp"]
    done = json.loads((fsdp / "train_done.json").read_text())
    assert done["fsdp"] is True and done["world_size"] == 2 and "rank_weights_sha256" not in done
    assert done["steps"] == json.loads((ddp / "train_done.json").read_text())["steps"] >= 3
    assert sorted(p.relative_to(fsdp).as_posix() for p in fsdp.rglob("*")) == \
        sorted(p.relative_to(ddp).as_posix() for p in ddp.rglob("*"))  # the same files, no per-rank extras
    a, b = load_file(str(fsdp / "model.safetensors")), load_file(str(ddp / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)  # whole tensors, not one shard
    moved = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert moved < 1e-4, moved
    sa, sb = load_file(str(fsdp / "state" / "model.safetensors")), load_file(str(ddp / "state" / "model.safetensors"))
    assert sa.keys() == sb.keys() and all(np.allclose(sa[k], sb[k], atol=1e-4) for k in sa)
    # evaluation ran on the sharded model (every rank gathering layer by layer): it scored what DDP's model scored
    assert np.allclose(np.load(fsdp / "val_logits.npy"), np.load(ddp / "val_logits.npy"), atol=1e-4)


def _state_round_trip(rank: int, world: int, port: int, folder) -> None:
    """One gloo rank of :func:`test_resume_state_round_trips_through_whole_tensors`."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from arena.train.fsdp import full_state, load_full_state, shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        config = tiny_decoder_config("llama", vocab_size=1000, num_labels=3, pad_token_id=0)
        cpu = torch.device("cpu")

        def sharded(seed: int):
            torch.manual_seed(seed)
            model = shard(AutoModelForSequenceClassification.from_config(config), cpu)
            return model, torch.optim.AdamW(model.parameters(), lr=1e-2)

        model, optimizer = sharded(0)
        ids = torch.randint(3, 1000, (2, 8), generator=torch.Generator().manual_seed(rank))  # each rank its batch
        model(input_ids=ids).logits.square().sum().backward()
        optimizer.step()
        weights, optim = full_state(model, optimizer)
        if rank == 0:
            torch.save({"weights": weights, "optim": optim}, folder / "whole.pt")
        else:
            assert weights == {} and optim == {}  # rank 0 alone receives (and writes)
        torch.distributed.barrier()
        given = torch.load(folder / "whole.pt", weights_only=True)  # set_state_dict shards this dict in place
        saved = torch.load(folder / "whole.pt", weights_only=True)
        fresh, fresh_optimizer = sharded(1)  # other weights, no optimizer state yet
        load_full_state(fresh, fresh_optimizer, given["weights"], given["optim"])
        again, again_optim = full_state(fresh, fresh_optimizer)
        if rank == 0:
            whole = AutoModelForSequenceClassification.from_config(config).state_dict()
            assert again.keys() == whole.keys() and all(again[k].shape == whole[k].shape for k in whole)
            assert all(torch.equal(again[k], saved["weights"][k]) for k in again)
            state, expected = again_optim["state"], saved["optim"]["state"]
            assert set(state) == set(expected) == {name for name, _ in fresh.named_parameters()}  # every one
            for name, moments in expected.items():
                assert all(torch.equal(torch.as_tensor(state[name][k]), torch.as_tensor(v)) for k, v in moments.items())
            (folder / "checked").write_text("ok")
    finally:
        torch.distributed.destroy_process_group()


def test_resume_state_round_trips_through_whole_tensors(tmp_path):
    """What --fsdp's resumable state holds: the whole weights and AdamW moments after a step on two ranks, gathered
    on rank 0, loaded into freshly sharded copies and gathered again: identical, every tensor its full shape."""
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_state_round_trip, args=(2, port, tmp_path), nprocs=2, join=True)
    assert (tmp_path / "checked").read_text() == "ok"
