# MoSARe developer targets. Everything runs inside .venv (created on demand).
PY := .venv/bin/python
PIP := .venv/bin/pip

.PHONY: venv lint test test-all test-slow demo demo-assets demo-assets-brca demo-cli clean

venv: .venv/.installed

# The marker is written only after a fully successful install, so a half-created venv
# (e.g. pip failed midway) is rebuilt on the next run.
.venv/.installed: requirements.txt pyproject.toml
	@if [ ! -x $(PY) ]; then python3 -m venv .venv; fi
	$(PIP) install -r requirements.txt
	$(PIP) install -e . --no-deps
	touch $@

# ruff with the configuration in pyproject.toml (CI runs it before the tests)
lint: venv
	$(PY) -m ruff check mosare dashboard bench tests streamlit_app.py

test: venv
	$(PY) -m pytest -q -m "not slow"

test-all: venv
	$(PY) -m pytest -q

# Only the tests marked slow (CI runs them after `make test`).
test-slow: venv
	$(PY) -m pytest -q -m slow

# The dashboard with its embedded demo (model in assets/demo, demo cases built on first launch, ~20 s).
PORT ?= 8501
demo: venv
	MOSARE_CACHE=$${MOSARE_CACHE:-.cache/mosare} $(PY) -m streamlit run streamlit_app.py \
		--server.address 127.0.0.1 --server.port $(PORT) --server.headless true

# Maintainers: rebuild assets/demo (synthetic cohort -> slide features -> experiment), ~10 min on 2 cores.
demo-assets: venv
	$(PY) -m mosare demo-assets --work .cache/demo-build

# Maintainers: ship the real TCGA-BRCA demo (fold-0 model + its held-out patients) after bench/brca_results.sh.
demo-assets-brca: venv
	$(PY) -m mosare demo-assets-brca --data ../shared/data/tcga-brca --experiment .cache/brca-results/tcga-brca

# The command-line experiment on the synthetic cohort (what `make demo` ran before the dashboard existed).
demo-cli: venv
	$(PY) -m mosare demo-cohort --out .cache/demo-cohort
	$(PY) -m mosare experiment --rna .cache/demo-cohort/rna.csv.gz --reports .cache/demo-cohort/reports.csv.gz \
		--slides .cache/demo-cohort/slides.csv --label-column label --classes A,B --out .cache/demo-run \
		--folds 3 --epochs 15 --workers 2 --models mosare,snn,abmil,text --scenarios complete,masked-unmasked --mask-rates 0.3
	cat .cache/demo-run/summary.md

clean:
	rm -rf .cache build .pytest_cache *.egg-info
	find . -path ./.venv -prune -o -type d -name __pycache__ -exec rm -rf {} +
