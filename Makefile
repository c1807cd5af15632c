# The two commands a newcomer needs: `make demo` and `make test`. Both set up .venv first.
PY := .venv/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: setup test demo bench clean-env

setup:
	@bash scripts/setup_env.sh

test: setup
	@bash scripts/run_tests.sh

demo: setup
	$(PY) -m transfer.demo

bench: setup
	$(PY) benchmarks/pretrain_step.py
	$(PY) benchmarks/fewshot_solver.py

clean-env:
	rm -rf .venv .venv.install.log
