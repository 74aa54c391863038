# The README contract: `make demo` and `make test` do all the set-up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install demo test clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	# torch first, pinned: on these machines this is a local CPU build (other specs pull CUDA wheels)
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/ridgeline demo

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) results
