# Two commands on a fresh machine:
#   make demo   set up .venv and run the main job (the shipped hierarchical grasp policy: table, JSON, plot, video)
#   make test   set up .venv and run lint + the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT := out
export MUJOCO_GL ?= egl

.PHONY: setup demo test lint bench clean

$(BIN)/ds-robot: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev,bench,dist,ros,train]"
	touch $@

setup: $(BIN)/ds-robot

demo: setup
	$(BIN)/ds-robot eval grasp --controller hier --task realistic --split test --episodes 50 --seed 0 \
		--json $(OUT)/eval_hier.json --plot $(OUT)/eval_hier.png
	$(BIN)/ds-robot render grasp --controller hier --task realistic --split test --seed 0 --out $(OUT)/grasp_hier.mp4

lint: setup
	$(BIN)/ruff check ds_robot tests launch

test: lint
	$(BIN)/python -m ds_robot.model.generate --check
	$(BIN)/python -m pytest -q -n 2 tests

bench: setup
	$(BIN)/ds-robot eval grasp --controller scripted --episodes 300 --seed 0 \
		--json $(OUT)/eval_scripted_300.json --plot $(OUT)/eval_scripted_300.png
	$(BIN)/ds-robot bench sim --json $(OUT)/bench_sim.json

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .ruff_cache
