"""``submit.ipynb`` and ``submit.py``: the same cells, as a Kaggle notebook and as a script.

The first cell holds the parameters (tagged ``parameters``, as papermill expects): Kaggle's paths by default, so
the notebook runs as uploaded, and plain values that anyone can change to run it elsewhere. The script also takes
them as options (``python submit.py --input-root DIR --working DIR``). The cells then find the bundle and the
competition's ``test.csv`` under the input root, install arena from the bundle's wheels with pip and no index, and
run arena-infer (as ``python -m arena.infer.cli``: a console script may not be on a kernel's PATH) with the options
given to arena-pack, printing its lines as they come and failing the notebook on its ``error:`` line.
"""

from __future__ import annotations

import json

from arena.artifacts import PACK_FILE, SUBMISSION_HEADER

COMPETITION = "llm-classification-finetuning"
SUBMISSION = "submission.csv"

_PARAMETERS = '''\
# Parameters: Kaggle's paths by default. Change them to run this notebook elsewhere.
INPUT_ROOT = "/kaggle/input"      # where Kaggle mounts the competition data and the bundle dataset
WORKING = "/kaggle/working"       # where submission.csv is written
BUNDLE = None                     # the folder holding {pack_file}; None: searched for under INPUT_ROOT
TEST_PATH = None                  # the competition's test.csv; None: searched for under INPUT_ROOT
COMPETITION = {competition!r}
ARENA_INFER_OPTIONS = {options}
'''

_SCRIPT_OPTIONS = '''\
if __name__ == "__main__":
    import argparse

    _parser = argparse.ArgumentParser(description="Score the competition's test.csv with the packed models")
    _parser.add_argument("--input-root", default=INPUT_ROOT)
    _parser.add_argument("--working", default=WORKING)
    _parser.add_argument("--bundle", default=BUNDLE)
    _parser.add_argument("--test-path", default=TEST_PATH)
    _args = _parser.parse_args()
    INPUT_ROOT, WORKING, BUNDLE, TEST_PATH = _args.input_root, _args.working, _args.bundle, _args.test_path
'''

_LOCATE = '''\
import json
import subprocess
import sys
from pathlib import Path

TEST_HEADER = "id,prompt,response_a,response_b"


def find_bundle(root):
    """The folder with this bundle's {pack_file}: beside this script, else the shallowest one under root."""
    here = Path(globals().get("__file__", "")).resolve().parent if "__file__" in globals() else None
    if here is not None and (here / "{pack_file}").is_file():
        return here
    found = sorted(Path(root).glob("**/{pack_file}"), key=lambda p: len(p.parts))
    if not found:
        raise SystemExit(f"error: no {pack_file} under {{root}}: add the bundle dataset to the notebook or set BUNDLE")
    return found[0].parent.resolve()


def find_test(root, bundle):
    """The competition's test.csv under root (the competition's folder first), never one inside the bundle."""
    candidates = [p for p in Path(root).glob("**/test.csv") if bundle not in p.resolve().parents]
    candidates = [p for p in candidates if p.open(encoding="utf-8").readline().strip() == TEST_HEADER]
    candidates.sort(key=lambda p: (COMPETITION not in p.parts, len(p.parts), str(p)))
    if not candidates:
        raise SystemExit(f"error: no test.csv with the header {{TEST_HEADER}} under {{root}}: add the competition "
                         "data or set TEST_PATH")
    return candidates[0]


bundle = Path(BUNDLE).resolve() if BUNDLE else find_bundle(INPUT_ROOT)
pack = json.loads((bundle / "{pack_file}").read_text())
test_csv = Path(TEST_PATH) if TEST_PATH else find_test(INPUT_ROOT, bundle)
print(f"bundle: {{bundle}} ({{', '.join(pack['infer_models'])}})")
print(f"test file: {{test_csv}}")
'''

_INSTALL = '''\
# Offline install: arena and what the image lacks, from the bundle's wheels only.
subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(bundle / "wheels"),
                "--quiet", str(bundle / "wheels" / pack["arena_wheel"])], check=True)
'''

_INFER = '''\
submission = Path(WORKING) / "{submission}"
Path(WORKING).mkdir(parents=True, exist_ok=True)
command = [sys.executable, "-m", "arena.infer.cli", str(test_csv), "--out", str(submission)]
for name in pack["infer_models"]:
    command += ["--model", str(bundle / "models" / name)]
command += ARENA_INFER_OPTIONS
print(" ".join(command), flush=True)
process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
lines = []
for line in process.stdout:
    print(line, end="", flush=True)
    lines.append(line.strip())
if process.wait() != 0:
    errors = [ln for ln in lines if ln.startswith("error:")]
    raise SystemExit(errors[-1] if errors else f"arena-infer failed with exit code {{process.returncode}}")
summary = json.loads(lines[-1])
with open(submission, encoding="utf-8") as fh:
    assert fh.readline().strip() == {header!r}, "the submission's header is not Kaggle's"
print(f"submission: {{submission}} ({{summary['rows']}} rows in {{summary['wall_s']:.0f}} s)")
'''


def cells(options: list[str]) -> list[tuple[str, str]]:
    """(kind, source) of every cell; ``options``: the arena-infer options given to arena-pack."""
    fmt = {"pack_file": PACK_FILE, "competition": COMPETITION, "options": json.dumps(options),
           "submission": SUBMISSION, "header": ",".join(SUBMISSION_HEADER)}
    return [
        ("markdown", "# arena: score the competition's test.csv offline\n\nWritten by `arena-pack`. Add the bundle "
                     "dataset and the competition's data to this notebook, turn the internet off, and run all "
                     "cells: it installs arena from the bundle's wheels, scores `test.csv` with the packed models "
                     "and writes `/kaggle/working/submission.csv`."),
        ("parameters", _PARAMETERS.format(**fmt)),
        ("code", _LOCATE.format(**fmt)),
        ("code", _INSTALL.format(**fmt)),
        ("code", _INFER.format(**fmt)),
    ]


def render_notebook(options: list[str]) -> str:
    """``submit.ipynb`` (nbformat 4.5) as JSON text."""
    out = []
    for i, (kind, source) in enumerate(cells(options)):
        cell: dict = {"cell_type": "markdown" if kind == "markdown" else "code", "id": f"arena-{i}",
                      "metadata": {"tags": ["parameters"]} if kind == "parameters" else {}, "source": source}
        if cell["cell_type"] == "code":
            cell.update(execution_count=None, outputs=[])
        out.append(cell)
    notebook = {"cells": out, "nbformat": 4, "nbformat_minor": 5,
                "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                             "language_info": {"name": "python"}}}
    return json.dumps(notebook, indent=1) + "\n"


def render_script(options: list[str]) -> str:
    """``submit.py``: the notebook's cells in order, with its parameters also taken as options."""
    parts = ['"""Score the competition\'s test.csv offline with the packed models (written by arena-pack; the '
             'same cells as submit.ipynb)."""\n']
    for kind, source in cells(options):
        if kind == "markdown":
            continue
        parts.append(source)
        if kind == "parameters":
            parts.append(_SCRIPT_OPTIONS)
    return "\n".join(parts)
