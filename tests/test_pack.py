"""arena-pack (issue 24): a bundle that scores the competition's test.csv offline, tested the way Kaggle runs it.

The end-to-end tests build a bundle (a fold ensemble blended with an export, swap TTA), lay out a fake
``/kaggle/input`` tree, make a fresh virtual environment holding only what the test's target freeze lists (the
distributions are linked from this venv, torch included: that torch is the local CPU wheel), and execute
``submit.ipynb`` in a real kernel (nbclient) of that environment, then ``submit.py``, with no package index
(``PIP_NO_INDEX=1``, no pip configuration). Packing itself asks pip's configured index for the one dependency the
test target lacks (tqdm), as a user packing online before uploading would.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from arena.errors import ConfigError
from arena.pack.target import Target, canonical, load_target, parse_freeze, platform_tags
from tests.conftest import TEST_CSV, TOKENIZER, TRAIN_CSV
from tests.test_infer import check_submission
from tests.test_safety import copy_model, tree

PY = f"{sys.version_info.major}.{sys.version_info.minor}"
MISSING = "tqdm"
"""What the test target lacks, so the bundle must carry it: small, pure Python, and imported by arena-infer."""


# ------------------------------------------------------------------------------------------------ target


def test_freeze_parsing_reads_pins_bare_names_headers_and_urls():
    packages, header = parse_freeze("# python: 3.12\n# platform: manylinux_2_35_x86_64\nTorch==2.10.0+cpu\n"
                                    "huggingface_hub==0.30.1\nnumpy\nfoo @ file:///x/foo.whl\n"
                                    "-e git+https://x/y.git#egg=Bar_Baz\n\n# comment\n", "f")
    assert header == {"python": "3.12", "platform": "manylinux_2_35_x86_64"}
    assert packages == {"torch": "2.10.0+cpu", "huggingface-hub": "0.30.1", "numpy": None, "foo": None,
                        "bar-baz": None}
    target = Target("t", "3.12", "manylinux_2_35_x86_64", packages)
    assert target.constraints() == ["huggingface-hub==0.30.1", "torch==2.10.0"]  # local label dropped, sorted
    with pytest.raises(ConfigError, match="line 1"):
        parse_freeze("not a freeze line!\n", "f")


def test_platform_tags_widen_manylinux_to_older_glibc():
    tags = platform_tags("manylinux_2_35_x86_64")
    assert tags[0] == "manylinux_2_35_x86_64" and tags[-1] == "manylinux2014_x86_64"
    assert "manylinux_2_28_x86_64" in tags and "manylinux_2_17_x86_64" in tags and len(tags) == 20
    with pytest.raises(ConfigError, match="--platform"):
        platform_tags("ubuntu-22.04")


def test_default_kaggle_cpu_list_has_the_issue_facts_and_no_onnxruntime():
    target = load_target(None, default="kaggle-cpu")
    assert target.python == "3.12" and target.platform == "manylinux_2_35_x86_64"
    assert target.packages["torch"] == "2.10.0+cpu" and target.packages["transformers"] == "5.0.0"
    assert target.packages["peft"] == "0.18.1" and target.packages["typer"] == "0.24.1"
    assert not target.has("onnxruntime") and not target.has("openvino") and not target.has("optimum")
    assert load_target(None, default="kaggle-gpu").has("torch")


def test_pins_against_the_target():
    from arena.pack.wheels import missing_requirements

    target = Target("img", "3.12", "manylinux_2_35_x86_64",
                    {"torch": "2.10.0+cpu", "transformers": "4.30.0", "numpy": None})
    with pytest.raises(ConfigError, match=r"transformers>=4.45.*has transformers 4.30.0"):
        missing_requirements(["transformers>=4.45"], target)
    reqs = ["torch>=2.4", "numpy>=1.26", "onnxruntime>=1.18", 'openvino>=2025.1; extra == "openvino"',
            'tomli; python_version < "3.11"']
    assert missing_requirements(reqs, target) == ["onnxruntime>=1.18"]
    assert missing_requirements(reqs, target, extras=("openvino",)) == ["onnxruntime>=1.18", "openvino>=2025.1"]
    no_torch = Target("img", "3.12", "manylinux_2_35_x86_64", {})
    with pytest.raises(ConfigError, match="--with-torch"):
        missing_requirements(["torch>=2.4"], no_torch)
    assert missing_requirements(["torch>=2.4"], no_torch, with_torch=True) == ["torch>=2.4"]


def _tiny_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A pure-Python wheel built here, so pip's resolve and download are tested with no index."""
    dist = f"{name.replace('-', '_')}-{version}"
    wheel = folder / f"{dist}-py3-none-any.whl"
    meta = "Metadata-Version: 2.1\nName: {}\nVersion: {}\n{}".format(
        name, version, "".join(f"Requires-Dist: {r}\n" for r in requires))
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(f"{name.replace('-', '_')}/__init__.py", "")
        zf.writestr(f"{dist}.dist-info/METADATA", meta)
        zf.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                              "Tag: py3-none-any\n")
        zf.writestr(f"{dist}.dist-info/RECORD", "")
    return wheel


def test_resolve_and_download_take_only_what_the_target_lacks(tmp_path):
    from arena.pack.wheels import download, resolve

    house = tmp_path / "house"
    house.mkdir()
    _tiny_wheel(house, "arena-dep-a", "1.0", ("arena-dep-b>=1", "arena-dep-c"))
    _tiny_wheel(house, "arena-dep-b", "1.0")
    _tiny_wheel(house, "arena-dep-b", "2.0")
    _tiny_wheel(house, "arena-dep-c", "1.0")
    sources = ["--no-index", "--find-links", str(house)]
    target = Target("img", PY, "manylinux_2_28_x86_64", {"arena-dep-c": "1.0", "arena-dep-b": "1.0"})
    pins = resolve(["arena-dep-a"], target, sources=sources, with_torch=False)
    assert [(p.name, p.version) for p in pins] == [("arena-dep-a", "1.0")]  # b pinned by the target, c present
    out = tmp_path / "wheels"
    out.mkdir()
    assert [p.name for p in download(pins, out, target, sources=sources)] == ["arena_dep_a-1.0-py3-none-any.whl"]
    lacking = Target("img", PY, "manylinux_2_28_x86_64", {})
    assert {(p.name, p.version) for p in resolve(["arena-dep-a"], lacking, sources=sources, with_torch=False)} \
        == {("arena-dep-a", "1.0"), ("arena-dep-b", "2.0"), ("arena-dep-c", "1.0")}
    with pytest.raises(ConfigError, match="pip could not resolve"):
        resolve(["arena-dep-a>=5"], target, sources=sources, with_torch=False)


# ------------------------------------------------------------------------------------------------ bundles


def _arena_requirements() -> list[str]:
    from packaging.requirements import Requirement

    names = []
    for line in md.distribution("arena-toolkit").requires or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            names.append(req.name)
    return names


def kaggle_like_dists(exclude: set[str]) -> dict[str, md.Distribution]:
    """What the test's target image holds: arena's dependencies, a Jupyter kernel and pip, with everything they
    need (closed over this venv's metadata), less ``exclude``."""
    from packaging.requirements import Requirement

    found: dict[str, md.Distribution] = {}
    todo = [*_arena_requirements(), "ipykernel", "pip"]
    while todo:
        name = canonical(todo.pop())
        if name in found or name in exclude or name == "arena-toolkit":
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        found[name] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return found


def kaggle_like_venv(path: Path, dists: dict[str, md.Distribution]) -> Path:
    """A fresh venv holding exactly ``dists`` (linked from this venv); returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    site = next(path.glob("lib/python*/site-packages"))
    for dist in dists.values():
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            source = Path(dist.locate_file(top))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    return path / "bin" / "python"


def _freeze_text(dists: dict[str, md.Distribution]) -> str:
    lines = [f"# python: {PY}", "# platform: manylinux_2_28_x86_64"]
    return "\n".join(lines + [f"{name}=={d.version}" for name, d in sorted(dists.items())]) + "\n"


def _train_folds(out: Path, tiny_config: Path) -> Path:
    from arena.encode import EncoderConfig
    from arena.train.loop import TrainConfig, run_training

    run_training(TrainConfig(data=str(TRAIN_CSV), model=str(tiny_config), tokenizer=str(TOKENIZER),
                             random_init=True, output=str(out), epochs=1, max_rows=40, head="hf", batch_size=8,
                             lr=1e-3, folds=2, encoder=EncoderConfig(max_length=64)))
    return out


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory, tiny_config, tiny_export):
    """A fake Kaggle: /kaggle/input with the competition's test.csv and the bundle, /kaggle/working, the test
    target's freeze, and the bundle's summary."""
    root = tmp_path_factory.mktemp("kaggle")
    folds = _train_folds(root / "src" / "folds", tiny_config)
    (root / "input" / "llm-classification-finetuning").mkdir(parents=True)
    shutil.copy2(TEST_CSV, root / "input" / "llm-classification-finetuning" / "test.csv")
    dists = kaggle_like_dists({MISSING})
    freeze = root / "src" / "freeze.txt"
    freeze.write_text(_freeze_text(dists))
    from arena.pack.cli import run_pack

    before = tree(folds) | tree(tiny_export)
    summary = run_pack([folds, tiny_export], root / "input" / "arena-bundle", dataset_id="tester/arena-bundle",
                       target_freeze=freeze, infer_options=["--tta", "swap", "--backend", "auto",
                                                            "--time-limit", "9h"])
    assert tree(folds) | tree(tiny_export) == before  # the sources are copied, never touched
    return {"root": root, "bundle": root / "input" / "arena-bundle", "summary": summary, "dists": dists}


def test_bundle_holds_wheels_models_metadata_and_notebook(kaggle):
    bundle, summary = kaggle["bundle"], kaggle["summary"]
    wheels = sorted(p.name for p in (bundle / "wheels").iterdir())
    assert wheels[0].startswith("arena_toolkit-") and any(w.startswith(f"{MISSING}-") for w in wheels)
    assert len(wheels) == 2  # nothing the target has is packed: no torch, no numpy
    meta = json.loads((bundle / "dataset-metadata.json").read_text())
    assert meta["id"] == "tester/arena-bundle" and 6 <= len(meta["title"]) <= 50 and meta["licenses"]
    assert summary["infer_models"] == ["folds", "export"]
    assert (bundle / "models" / "folds" / "fold_0" / "config.json").is_file()
    record = json.loads((bundle / "pack.json").read_text())
    from arena.io import sha256_file

    assert all(sha256_file(bundle / name) == digest for name, digest in record["files"].items())
    assert "models/export/manifest.json" in record["files"]  # the models' own manifests are the bundle's files too
    exported = json.loads((bundle / "models" / "export" / "manifest.json").read_text())["files"]
    assert {f"models/export/{name}" for name in exported} <= set(record["files"])  # OpenVINO's IR among them
    assert {"model.ov.xml", "model.ov.bin"} <= set(exported) or importlib.util.find_spec("openvino") is None
    assert summary["bytes"]["total"] == sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file()) \
        - (bundle / "pack.json").stat().st_size
    with zipfile.ZipFile(bundle / "wheels" / record["arena_wheel"]) as zf:
        assert "arena/pack/freezes/kaggle-cpu.txt" in zf.namelist()  # package data travels in the wheel
    import nbformat

    nbformat.validate(nbformat.read(bundle / "submit.ipynb", as_version=4))


def _offline_env(monkeypatch, kernel_dir: Path, python: Path) -> None:
    """No index and no pip configuration for anything started from now on, and a kernel of ``python``."""
    for name in ("PYTHONPATH", "PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = kernel_dir / "kernels" / "kaggle-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "kaggle-test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))


def _test_ids() -> list[str]:
    return pd.read_csv(TEST_CSV, dtype={"id": str})["id"].tolist()


def run_notebook_offline(notebook: Path, *, python: Path, input_root: Path, working: Path, tmp_path: Path,
                         monkeypatch) -> str:
    """Execute a bundle's ``submit.ipynb`` in a real kernel of ``python`` with no package index, its paths set the
    way papermill's ``-p`` would; returns everything the cells printed."""
    import nbformat
    from nbclient import NotebookClient

    _offline_env(monkeypatch, tmp_path / "jupyter", python)
    nb = nbformat.read(notebook, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(f"INPUT_ROOT = {str(input_root)!r}\nWORKING = {str(working)!r}"))
    NotebookClient(nb, kernel_name="kaggle-test", timeout=600, resources={"metadata": {"path": str(tmp_path)}}) \
        .execute()
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_notebook_runs_offline_in_a_fresh_kernel(kaggle, tmp_path, monkeypatch):
    python = kaggle_like_venv(tmp_path / "venv", kaggle["dists"])
    assert subprocess.run([python, "-c", f"import {MISSING}"], capture_output=True).returncode != 0
    working = tmp_path / "working"
    printed = run_notebook_offline(kaggle["bundle"] / "submit.ipynb", python=python,
                                   input_root=kaggle["root"] / "input", working=working, tmp_path=tmp_path,
                                   monkeypatch=monkeypatch)
    check_submission(working / "submission.csv", _test_ids())
    assert "projected run time" in printed and "submission:" in printed
    assert subprocess.run([python, "-c", f"import {MISSING}, arena.pack"], capture_output=True).returncode == 0


def test_script_runs_offline_with_path_options(kaggle, tmp_path, monkeypatch):
    python = kaggle_like_venv(tmp_path / "venv", kaggle["dists"])
    _offline_env(monkeypatch, tmp_path / "jupyter", python)
    working = tmp_path / "working"
    done = subprocess.run([python, kaggle["bundle"] / "submit.py", "--input-root", kaggle["root"] / "input",
                           "--working", working], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    check_submission(working / "submission.csv", _test_ids())
    assert "submission:" in done.stdout


# ------------------------------------------------------------------------------------------------ misuse


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_export):
    ws = tmp_path_factory.mktemp("pack-ws")
    copy_model(tiny_export, ws / "export")
    (ws / "freeze.txt").write_text(_freeze_text(kaggle_like_dists(set())))
    (ws / "mine").mkdir()
    (ws / "mine" / "notes.txt").write_text("mine\n")
    return ws


BASE = ["export", "--out", "bundle", "--dataset-id", "tester/arena-bundle", "--target-freeze", "freeze.txt",
        "--no-index"]


@pytest.mark.parametrize("args, says", [
    (["nope", *BASE[1:]], "does not exist"),
    ([*BASE[:2], "export/bundle", *BASE[3:]], "inside the model folder"),
    ([*BASE, "--python-version", "2.7"], "--python-version '2.7'"),
    ([*BASE, "--python-version", "3.9"], "not a target Python"),
    ([*BASE[:2], "mine", *BASE[3:], "--overwrite"], "did not write"),
    ([*BASE, "--target-freeze", "nope.txt"], "--target-freeze nope.txt does not exist"),
    ([*BASE, "--dataset-id", "no-slash"], "--dataset-id"),
    ([*BASE, "--weights", "0.5,0.5"], "one per MODEL"),
    ([*BASE, "--time-limit", "soon"], "--time-limit"),
    ([*BASE, "--backend", "cuda"], "--backend"),
    ([*BASE, "--max-size-gb", "0.001"], "over the dataset limit of 0.001 GB"),
    ([*BASE[:4], "--target", "kaggle-cpu", "--backend", "openvino"], "--extra openvino"),
], ids=["missing model", "out inside model", "python 2.7", "python 3.9", "foreign out", "missing freeze",
        "bad dataset id", "weights count", "bad time limit", "bad backend", "over size limit",
        "openvino missing on the target"])
def test_misuse_is_one_error_line_and_writes_nothing(ws, monkeypatch, capsys, args, says):
    from arena.pack.cli import main

    monkeypatch.chdir(ws)
    monkeypatch.setattr(sys, "argv", ["arena-pack", *args])
    before = tree(ws)
    with pytest.raises(SystemExit) as exc:
        main()
    out, err = capsys.readouterr()
    assert exc.value.code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], err
    assert tree(ws) == before and not list(ws.glob(".bundle*"))


def test_repack_needs_overwrite_and_replaces_only_a_bundle(ws, monkeypatch, capsys):
    from arena.pack.cli import main

    monkeypatch.chdir(ws)
    monkeypatch.setattr(sys, "argv", ["arena-pack", *BASE])
    main()
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert out[0].startswith("wrote the bundle bundle") and summary["wheels"] == []  # the target has every dep
    first = tree(ws / "bundle")
    with pytest.raises(SystemExit):
        main()
    assert "--overwrite" in capsys.readouterr().err and tree(ws / "bundle") == first
    monkeypatch.setattr(sys, "argv", ["arena-pack", *BASE, "--overwrite", "--tta", "swap"])
    main()
    assert '"--tta", "swap"' in (ws / "bundle" / "submit.ipynb").read_text().replace('\\"', '"')
    (ws / "bundle" / "mine.txt").write_text("mine\n")
    with pytest.raises(SystemExit):
        main()
    assert "did not write" in capsys.readouterr().err and (ws / "bundle" / "mine.txt").is_file()
    shutil.rmtree(ws / "bundle")


def test_lora_checkpoint_is_packed_with_its_base_and_its_notebook_scores_offline(tmp_path, decoder_base, ws,
                                                                                   monkeypatch):
    """The bundle carries the base beside the adapter (relative path), scores like the source in this process, and
    its ``submit.ipynb`` scores the competition's test.csv in a fresh offline kernel."""
    import numpy as np

    from arena.data import read_test
    from arena.pack.cli import run_pack
    from arena.serving.loading import open_models
    from arena.serving.scoring import ScoreConfig, scorer_for
    from arena.train.loop import run_training
    from tests.conftest import lora_config

    lora = tmp_path / "lora"
    run_training(lora_config(decoder_base, lora, max_steps=1))
    inputs = tmp_path / "input"
    (inputs / "llm-classification-finetuning").mkdir(parents=True)
    shutil.copy2(TEST_CSV, inputs / "llm-classification-finetuning" / "test.csv")
    bundle = inputs / "lora-bundle"
    run_pack([lora], bundle, dataset_id="tester/lora-bundle", target_freeze=ws / "freeze.txt", no_index=True,
             infer_options=["--backend", "torch", "--precision", "fp32"])
    packed = bundle / "models" / "lora"
    meta = json.loads((packed / "arena.json").read_text())
    assert not Path(meta["head"]["base"]).is_absolute()
    assert (packed / meta["head"]["base"]).resolve() == (bundle / "models" / "base-model").resolve()
    records = read_test(TEST_CSV)
    probs = []
    for folder in (lora, packed):
        ensemble = open_models([folder], backend="torch", precision="fp32", device="cpu")
        probs.append(scorer_for(ensemble, ScoreConfig()).score(records))
    assert np.allclose(probs[0], probs[1], atol=1e-6)

    python = kaggle_like_venv(tmp_path / "venv", kaggle_like_dists(set()))
    working = tmp_path / "working"
    printed = run_notebook_offline(bundle / "submit.ipynb", python=python, input_root=inputs, working=working,
                                   tmp_path=tmp_path, monkeypatch=monkeypatch)
    check_submission(working / "submission.csv", _test_ids())
    assert "submission:" in printed
    scored = pd.read_csv(working / "submission.csv", dtype={"id": str}).set_index("id")
    ids = [r.id for r in records]
    assert np.allclose(scored.loc[ids, ["winner_model_a", "winner_model_b", "winner_tie"]].to_numpy(), probs[0],
                       atol=1e-5)  # the notebook's numbers are the source model's
