# modelyard: `make run` (whole stack + one pipeline run + serving), `make test`, `make down`.
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
UV_VERSION := 0.13.9
# pip warns once per package about index folders this machine's pip config names but lacks; drop that line.
PIPFILTER := { grep -v -e "is ignored: it is neither a file nor a directory" || true; }
# Telemetry off for everything make starts, and no hub look-ups (see infra/env.sh for the stack's env).
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true \
       RAY_USAGE_STATS_ENABLED=0 DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1 GX_ANALYTICS_ENABLED=false ORT_DISABLE_TELEMETRY=1

.PHONY: help setup browser data up run down status serve test reliability test-fast repro bench clean cluster-up cluster-down cluster-status postgres

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml infra/uv_pip.py
	@echo "==> creating $(VENV) and installing the pinned stack (requirements.lock); takes a few minutes once"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv==$(UV_VERSION) 2>&1 | $(PIPFILTER)
	# uv unpacks the wheels and byte-compiles them on every core, where pip uses one: about 1.5 min here instead
	# of 4. It reads no pip configuration: uv_pip.py runs it with pip's indexes, wheel folders, caps and CA bundle.
	$(BIN)/python infra/uv_pip.py install --quiet --python $(BIN)/python --compile-bytecode -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e . 2>&1 | $(PIPFILTER)
	touch $(STAMP)

setup: $(STAMP)  ## create .venv with the pinned dependencies (once; reused afterwards)

# The Prefect UI test drives Debian's Chromium with Playwright (whose own browser download is unreachable).
browser:  ## install Debian's chromium for the UI test (apt-get; once)
	@command -v chromium >/dev/null && exit 0
	echo "==> installing Debian's chromium for the Prefect UI test"
	SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo )
	$$SUDO apt-get install -y -q chromium >/dev/null || { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium >/dev/null; }

data: setup  ## fetch params.yaml's dataset (or RECIPE's) into data/ (reuses what is there) and export samples
	@$(BIN)/modelyard fetch $(if $(RECIPE),--recipe $(RECIPE))
	$(BIN)/modelyard samples $(if $(RECIPE),--recipe $(RECIPE))

up: setup  ## start Prefect server, MLflow server, Ray head and the deployment runner
	@infra/stack.sh up

run: data up  ## everything: install, fetch, start the stack, run the pipeline once (RECIPE=name to pick one), serve
	@source infra/env.sh
	echo "==> running the training-pipeline deployment (follow it in the Prefect UI too)"
	$(BIN)/python -m pipelines.trigger $(if $(RECIPE),--recipe $(RECIPE))
	echo "==> serving every task that has a champion"
	$(BIN)/python -m serving "$$MODELYARD_PARAMS" > "$$RUN_DIR/logs/serving.json"
	echo
	echo "  Prefect UI      http://127.0.0.1:$$PREFECT_PORT  (log in with the string in $${PREFECT_AUTH_STRING_PATH#$$PWD/})"
	echo "  MLflow UI       http://127.0.0.1:$$MLFLOW_PORT"
	echo "  Ray dashboard   http://127.0.0.1:$$RAY_DASHBOARD_PORT  (sign in with the token in $${RAY_AUTH_TOKEN_PATH#$$PWD/})"
	$(BIN)/modelyard try -p "$$MODELYARD_PARAMS" $(if $(RECIPE),--recipe $(RECIPE))

down:  ## stop everything `make up` / `make run` started (by recorded pids)
	@infra/stack.sh down

# The cluster's control plane runs Debian's PostgreSQL (as user postgres); installed once with apt-get.
postgres:  ## install Debian's postgresql for the cluster's control plane (apt-get; once)
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 && exit 0
	echo "==> installing Debian's postgresql for the cluster's control plane"
	SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo )
	$$SUDO apt-get install -y -q postgresql >/dev/null || { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q postgresql >/dev/null; }

cluster-up: setup postgres  ## a cluster on this machine: NODES=3 namespaces on a bridge (root), Ray + the control plane
	@CLUSTER_CONTROL_PLANE=$(or $(CONTROL_PLANE),1) infra/cluster.sh up $(or $(NODES),3)

cluster-down:  ## remove every namespace, link and process cluster-up made
	@infra/cluster.sh down

cluster-status:  ## the cluster's nodes and what Ray sees
	@infra/cluster.sh status

status:  ## which stack services are running
	@infra/stack.sh status

serve: setup  ## (re)deploy every task's champion to the running stack's Ray cluster, without training
	@source infra/env.sh
	$(BIN)/python -m serving "$$MODELYARD_PARAMS"

test: setup browser postgres  ## the whole suite, reliability included: real Ray, MLflow, Prefect, Ray Serve, DVC, the stack in a browser
	$(BIN)/python -m pytest tests -rA --durations=40

reliability: setup  ## only the faults, minutes of load and hostile input, each printing its figure
	$(BIN)/python -m pytest tests -m reliability -s --durations=0

test-fast: setup  ## what needs no server and no training (seconds)
	$(BIN)/python -m pytest tests -m "not slow and not integration and not stack and not reliability and not gpu"

repro: setup  ## dvc repro with the embedded defaults (no server needed)
	env -u MLFLOW_TRACKING_URI -u RAY_ADDRESS -u PREFECT_API_URL PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

bench: setup  ## benchmarks (print ratios against a baseline measured in the same run)
	$(BIN)/python -m bench.train_step
	$(BIN)/python -m bench.train_epoch --also-workers 2
	$(BIN)/python -m bench.serve
	$(BIN)/python -m bench.batch_predict
	$(BIN)/python -m bench.search_engines
	$(BIN)/python -m bench.engines
	$(BIN)/python -m bench.engines --recipe fashion-mlp

clean: down  ## remove run state and pipeline outputs (keeps .venv, data/raw and the MLflow store)
	rm -rf .run artifacts
