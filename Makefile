# The two commands a newcomer needs: `make demo` and `make test`. Both set up .venv first.
# `make study`: the MAST v2 study (4 arms x 3 pretraining seeds, probes, reports/study/; README).
PY := .venv/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: setup test demo study bench clean-env

setup:
	@bash scripts/setup_env.sh

test: setup
	@bash scripts/run_tests.sh

demo: setup
	$(PY) -m transfer.orchestrate.demo

study: setup
	$(PY) -m transfer.orchestrate.study

bench: setup
	$(PY) benchmarks/pretrain_step.py
	$(PY) benchmarks/fewshot_solver.py

clean-env:
	rm -rf .venv .venv.install.log
