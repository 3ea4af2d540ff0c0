VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test clean

$(STAMP): requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

demo: $(STAMP)
	$(PYTHON) -m free_core sample --steps 250 --batch 8 --out demo.png --json demo_stats.json

test: $(STAMP)
	$(PYTHON) -m pytest -q tests

clean:
	rm -rf $(VENV) .pytest_cache
