# vsre_ros: the newcomer's entry points. Each target sets up what it needs first (.ci/bootstrap:
# venv outside the tree, pinned deps, interface build), and is fast when nothing changed.
#   make test    set up, lint, run the test suite
#   make demo    set up, run the demo on the embedded default model (DEMO_ARGS=... passes flags)
#   make colcon-check  build the package with colcon in a temporary workspace
SHELL := /bin/bash
PY = $$(.ci/bootstrap)
# Tests and DDS: localhost discovery only; each pytest session picks a random ROS_DOMAIN_ID.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export MUJOCO_GL ?= egl
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: env test lint demo bench colcon-check
env:
	@.ci/bootstrap >/dev/null

lint:
	@py=$(PY) && $$py -m ruff check . && $$py -m ruff format --check .

test:
	@py=$(PY) && $$py -m ruff check . && $$py -m pytest -q $(PYTEST_ARGS)

demo:
	@py=$(PY) && $$py -m vsre_ros demo $(DEMO_ARGS)

colcon-check:
	@py=$(PY) && $$py -m pytest -q tests/ros/test_colcon_build.py

bench:
	@py=$(PY) && for b in bench/bench_*.py; do echo "== $$b"; $$py $$b || exit 1; done
