# MoSARe developer targets. Everything runs inside .venv (created on demand).
PY := .venv/bin/python
PIP := .venv/bin/pip

.PHONY: venv test test-all demo clean

venv: .venv/.installed

# The marker is written only after a fully successful install, so a half-created venv
# (e.g. pip failed midway) is rebuilt on the next run.
.venv/.installed: requirements.txt pyproject.toml
	@if [ ! -x $(PY) ]; then python3 -m venv .venv; fi
	$(PIP) install -r requirements.txt
	$(PIP) install -e . --no-deps
	touch $@

test: venv
	$(PY) -m pytest -q -m "not slow"

test-all: venv
	$(PY) -m pytest -q

demo: venv
	$(PY) -m mosare demo-cohort --out .cache/demo-cohort
	$(PY) -m mosare experiment --rna .cache/demo-cohort/rna.csv.gz --reports .cache/demo-cohort/reports.csv.gz \
		--slides .cache/demo-cohort/slides.csv --label-column label --classes A,B --out .cache/demo-run \
		--folds 3 --epochs 15 --workers 2 --models mosare,snn,abmil,text --scenarios complete,masked-unmasked --mask-rates 0.3
	cat .cache/demo-run/summary.md

clean:
	rm -rf .cache build .pytest_cache *.egg-info
	find . -path ./.venv -prune -o -type d -name __pycache__ -exec rm -rf {} +
