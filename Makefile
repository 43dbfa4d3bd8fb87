# The two commands: `make demo` and `make test`. Both create .venv on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ROOT_DIR ?= runs/quickstart

.PHONY: demo test install clean

# uv installs the pinned stack in half pip's time (parallel downloads and bytecode
# compilation: 56 vs 110 s on 2 cores, README "Development"); pip does it where uv cannot.
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

# The longest test files start first, so that no worker is left with one at the end.
FIRST_TESTS := tests/test_distribute_stop.py tests/test_resume.py tests/test_reliability.py \
	tests/test_distribute.py tests/test_pruning.py tests/test_methods.py tests/test_configs.py

test: $(VENV)/.installed-test
	$(PY) -m pytest -q -n 2 --dist loadfile $(FIRST_TESTS) tests

clean:
	rm -rf $(VENV) *.egg-info
