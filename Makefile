# The two commands a newcomer needs: `make demo` and `make test`. Both set up .venv first.
# `make test-fast`: the tests not marked slow. `make study`: the MAST v2 study (7 arms, each MAST-type
# arm with its own matched control, x 5 pretraining seeds, probes, reports/study/; docs/STUDY.md).
PY := .venv/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: setup test test-fast demo study bench clean-env

setup:
	@bash scripts/setup_env.sh

test: setup
	@bash scripts/run_tests.sh

test-fast: setup  # the inner loop: every test not marked slow
	@bash scripts/run_tests.sh -m "not slow"

demo: setup
	$(PY) -m transfer.orchestrate.demo

study: setup
	$(PY) -m transfer.orchestrate.study

bench: setup
	$(PY) benchmarks/pretrain_step.py
	$(PY) benchmarks/fewshot_solver.py

clean-env:
	rm -rf .venv .venv.install.log
