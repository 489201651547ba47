# One obvious command per action, the same locally, in CI and in images.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PROTOS := $(shell find protos -name '*.proto')
GENERATED := apexrl/.generated
# A failing benchmark fails its recipe even though its output goes through a pipe.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

.PHONY: setup protos test test-fast lint format bench bench-replay bench-sampling bench-learner bench-learner-group bench-actors bench-broadcast bench-atari bench-solve bench-startup bench-compare run images compose-test clean

setup: $(VENV)/.installed $(GENERATED)

# torch 2.13.0 (CPU) goes in first, from constraints.txt, so nothing pulls a CUDA build.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt --config-settings editable_mode=compat -e '.[train,atari,mujoco,video,datasets,dev,bench]'
	touch $@

# Generated code is never committed: it is produced here, by the grpcio-tools that
# matches the installed protobuf runtime, with mypy stubs beside it.
protos: $(GENERATED)
$(GENERATED): $(PROTOS) $(VENV)/.installed
	rm -rf apexrl
	$(PY) -m grpc_tools.protoc -I protos \
		--python_out=. --grpc_python_out=. \
		--plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy --mypy_out=. \
		--plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc --mypy_grpc_out=. \
		$(PROTOS)
	touch $@

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy services tests bench

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Every benchmark's JSON lines go to the record (bench/results.jsonl, committed) stamped with
# the commit, the date and the machine; one run id for all the benchmarks of one `make`.
ifeq ($(origin APEXRL_BENCH_RUN_ID),undefined)
APEXRL_BENCH_RUN_ID := $(shell date -u +%Y%m%dT%H%M%SZ)-$(shell git rev-parse --short=7 HEAD 2>/dev/null || echo nogit)
endif
export APEXRL_BENCH_RUN_ID
BENCH_RECORD ?= bench/results.jsonl
# Appends the lines to the record, then rewrites the README's table of figures from it.
RECORD := $(PY) -m bench.record append --record $(BENCH_RECORD) && $(PY) -m bench.record readme --record $(BENCH_RECORD)

bench: bench-replay bench-sampling bench-learner bench-actors bench-broadcast bench-startup bench-solve

bench-replay: setup
	$(PY) bench/replay_throughput.py | $(RECORD)

bench-sampling: setup
	$(PY) bench/sharded_sampling.py | $(RECORD)

bench-learner: setup
	$(PY) bench/learner_throughput.py | $(RECORD)

bench-actors: setup
	$(PY) bench/actor_throughput.py | $(RECORD)

bench-broadcast: setup
	$(PY) bench/parameter_broadcast.py | $(RECORD)

bench-learner-group: setup
	$(PY) bench/learner_group.py | $(RECORD)

bench-atari: setup
	$(PY) bench/atari_throughput.py | $(RECORD)

bench-startup: setup
	$(PY) bench/startup.py | $(RECORD)

bench-solve: setup
	$(PY) bench/time_to_solve.py cartpole | $(RECORD)

# The newest recorded run against the newest earlier one on this machine; exit 1 on a regression.
bench-compare: setup
	$(PY) -m bench.record compare --record $(BENCH_RECORD)

# `apexrl run` for SOAK_SECONDS with the memory of every process over time; a PNG and JSON lines.
.PHONY: soak
SOAK_SECONDS ?= 300
soak: setup
	$(PY) bench/soak.py --seconds $(SOAK_SECONDS)

run: setup
	$(BIN)/apexrl run

# The service images (replay, learner, actor, evaluator) from a wheelhouse built here;
# the official python base where it can be pulled, else a local one (docker/build-images.sh).
images: setup
	docker/build-images.sh

# docker-compose.yml end to end: the images, 8 actors, rescaling, a shard restart, monitoring.
compose-test: images
	APEXRL_COMPOSE_TEST=1 $(PY) -m pytest -s tests/e2e/test_compose.py tests/e2e/test_compose_atari.py \
		tests/e2e/test_compose_secure.py tests/e2e/test_swarm.py

clean:
	rm -rf $(VENV) apexrl build *.egg-info .mypy_cache .ruff_cache .pytest_cache
