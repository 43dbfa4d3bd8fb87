# The two commands: `make demo` and `make test`. Both create .venv on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ROOT_DIR ?= runs/quickstart

.PHONY: demo test install clean

# uv installs the pinned stack in half pip's time (parallel downloads and bytecode
# compilation: 56 vs 110 s on 2 cores, docs/development.md); pip does it where uv cannot.
$(VENV)/.base:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv || $(PY) -m pip install -q --upgrade pip
	touch $@

install_editable = $(PY) -m uv pip install -q --python $(PY) --compile-bytecode -e '$(1)' \
	|| $(PY) -m pip install -q -e '$(1)'

$(VENV)/.installed: setup.py $(VENV)/.base
	$(call install_editable,.)
	touch $@

$(VENV)/.installed-test: setup.py $(VENV)/.base
	$(call install_editable,.[test])
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m purl_tf.train --gin_file=gin/quickstart.gin --root_dir=$(ROOT_DIR)
	$(PY) tools/report.py $(ROOT_DIR)

# The longest test files start first, in this order (longest-first keeps one worker from
# being left alone with a long file at the end; test_configs shares nothing, so the other
# worker builds the session's data and pre-trained LeNet-5 for the multi-worker stop test
# meanwhile without waiting); the rest follow. Every file is named: pytest merges a file
# given before its folder back into the folder's alphabetical order. --no-loadscope-reorder
# keeps the order: pytest-xdist would otherwise start the files with the most tests first
# and the long one-test files last.
FIRST_TESTS := tests/test_configs.py tests/test_distribute_stop.py tests/test_methods.py \
	tests/test_api.py tests/test_pruning.py tests/test_distribute.py tests/test_resume.py \
	tests/test_channel_run.py tests/test_any_model.py tests/test_policy_transfer.py \
	tests/test_channel_controller.py tests/test_channel_allocations.py tests/test_keras3.py \
	tests/test_models.py tests/test_data.py tests/test_reliability.py tests/test_search.py
TESTS := $(FIRST_TESTS) $(filter-out $(FIRST_TESTS),$(sort $(wildcard tests/test_*.py)))

test: $(VENV)/.installed-test
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15 $(TESTS)

clean:
	rm -rf $(VENV) *.egg-info
