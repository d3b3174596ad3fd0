# aotpt developer commands. `make install && make test` is the whole set-up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?= ../shared/data
ARGS ?=
MODEL ?= minilm
LAUNCHER ?=
RUNS ?= logs/runs
ROOT := $${AOTPT_ROOT:-.}

.PHONY: install test test-slow test-full test-gpu train sweep paper search export predict serve submit report study study-pilot study-grid study-background study-stop study-drain study-commit study-page bench bench-serving bench-server lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python  ## venv + CPU torch first (the plain wheel pulls CUDA), then the package
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"

# The default suite runs on every core (pytest-xdist, one test file per worker so that each module fixture is
# built once); tests/conftest.py gives each worker its share of the cores' threads. The slow suite stays serial:
# its multi-process tests (DDP, the study's two workers, Ctrl-C and resume) time their steps and count threads.
test:  ## fast suite: unit tests + short MiniLM runs on real data (~minutes, CPU)
	WANDB_MODE=disabled $(BIN)/pytest -m "not slow and not gpu" -q --durations=15 -n auto --dist loadfile

test-slow:  ## only the slow tests: longer real-data, multi-process (DDP, resume) and CLI runs (CI runs them)
	WANDB_MODE=disabled $(BIN)/pytest -m "slow and not gpu" -q --durations=15

test-full:  ## everything except GPU tests, slow learning checks included
	WANDB_MODE=disabled $(BIN)/pytest -m "not gpu" -q

test-gpu:  ## the CUDA cases of the device-parametrised tests (they skip without a CUDA device)
	WANDB_MODE=disabled $(BIN)/pytest -m gpu -q -rs

train:  ## e.g. make train ARGS="task=mrpc method=aot reparam=fc"
	$(BIN)/python -m aotpt.train data_dir=$(DATA_DIR) $(ARGS)

sweep:  ## e.g. make sweep SWEEP=aot_glue_minilm
	$(BIN)/python -m aotpt.train -m --config-dir sweeps --config-name $(SWEEP) data_dir=$(DATA_DIR) $(ARGS)

paper:  ## the paper's grid on one backbone, then its report: make paper MODEL=roberta_base [LAUNCHER=paper_slurm] [ARGS="task=rte,cb"]
	$(BIN)/python -m aotpt.train -m --config-dir sweeps --config-name paper_$(MODEL) data_dir=$(DATA_DIR) \
		$(if $(LAUNCHER),hydra/launcher=$(LAUNCHER)) $(ARGS); status=$$?; \
	$(BIN)/python -m aotpt.report runs_dir=$(ROOT)/logs/multiruns/paper_$(MODEL) out_dir=reports/paper_$(MODEL) \
		sweep=paper_$(MODEL) 'sweep_overrides="$(ARGS)"' data_dir=$(DATA_DIR) 'title=Paper protocol on $(MODEL)' \
		"commands=['make paper MODEL=$(MODEL)$(if $(ARGS), ARGS=\"$(ARGS)\")']" && exit $$status

search:  ## Optuna search (lr x rank x reparam for AoT), resumable: make search ARGS="task=rte search.n_trials=30"
	$(BIN)/python -m aotpt.search data_dir=$(DATA_DIR) $(ARGS)

export:  ## e.g. make export ARGS="run_dir=logs/runs/rte-minilm-aot/seed42 dtype=bf16"
	$(BIN)/python -m aotpt.export $(ARGS)

predict:  ## e.g. make predict ARGS="artifacts=[a/table.safetensors,b/table.safetensors] input=requests.jsonl mode=host"
	$(BIN)/python -m aotpt.predict $(ARGS)

serve:  ## e.g. make serve ARGS="artifacts=[a/table.safetensors,b/table.safetensors] mode=onthefly port=8000"
	$(BIN)/python -m aotpt.serve $(ARGS)

submit:  ## leaderboard files, e.g. make submit RUNS="[logs/runs/a/seed42,logs/runs/b/seed42]"
	$(BIN)/python -m aotpt.submit runs=$(RUNS) data_dir=$(DATA_DIR) $(ARGS)

report:  ## tables, figures and a page from run folders: make report RUNS=logs/multiruns/paper_minilm ARGS="out_dir=reports/x"
	$(BIN)/python -m aotpt.report runs_dir=$(RUNS) data_dir=$(DATA_DIR) $(ARGS)

STUDY := docs/results/minilm
STUDY_SEEDS ?= 1 2 3
STUDY_ARGS ?=
# STUDY_WORKERS=N: N runs trained at once, each with cores/N threads (at least 1), all walking the same job
# list: a job another worker trains is locked (its folder's .lock), so a worker passes over it to the next.
# On this 2-core CPU two one-thread workers train about 1.5x the runs per hour of one two-thread process.
# STUDY_STAGGER: seconds between the workers' starts.
STUDY_WORKERS ?= 1
STUDY_STAGGER ?= 5
# The study's jobs (the pilot's too: study_minilm_pilot) carry STUDY_ENV, by which study-stop finds them.
STUDY_JOBS := aotpt.train -m --config-dir sweeps --config-name study_minilm
STUDY_ENV = AOTPT_STUDY=$(abspath $(STUDY))
# While $(STUDY)/.study-drain exists (make study-drain) no job starts: the running ones finish, then the study ends.
STUDY_DRAIN = $(STUDY)/.study-drain
STUDY_DRAIN_ENV = AOTPT_DRAIN_FILE=$(abspath $(STUDY_DRAIN))

study: study-pilot  ## the MiniLM study (issue #15): the pilot, then the grid seed by seed; finished runs are skipped; STUDY_WORKERS=2 trains two at once
	@rm -f $(STUDY)/.study-stop $(STUDY_DRAIN)
	@if [ $(STUDY_WORKERS) -gt 1 ]; then \
		trap 'echo "stopping the workers"; $(MAKE) --no-print-directory study-stop > /dev/null; wait; exit 130' INT TERM; \
		threads=$$(( $$(env -u OMP_NUM_THREADS nproc) / $(STUDY_WORKERS) )); [ $$threads -ge 1 ] || threads=1; \
		for w in $$(seq $(STUDY_WORKERS)); do \
			echo "worker $$w: $$threads thread(s), log $(STUDY)/study-worker$$w.log"; \
			OMP_NUM_THREADS=$$threads $(MAKE) --no-print-directory study-grid STUDY_KEEP_GOING=1 \
				> $(STUDY)/study-worker$$w.log 2>&1 & \
			sleep $(STUDY_STAGGER); \
		done; \
		wait; \
		[ ! -e $(STUDY)/.study-stop ] || { echo "stopped (make study-stop)"; exit 130; }; \
		[ ! -e $(STUDY_DRAIN) ] || { echo "drained (make study-drain)"; exit 130; }; \
		echo "workers done; one pass checks that every job finished (and retries any that failed)"; \
	fi
	$(MAKE) --no-print-directory study-grid

study-pilot:  ## the study's pilot (sweeps/study_minilm_pilot.yaml); `make study` runs it first
	@rm -f $(STUDY_DRAIN)
	$(STUDY_ENV) $(STUDY_DRAIN_ENV) $(BIN)/python -m $(STUDY_JOBS)_pilot data_dir=$(DATA_DIR)

study-grid:  ## the grid, seed by seed (study and its workers call it); STUDY_KEEP_GOING=1 passes over failed jobs
	@export $(STUDY_ENV) $(STUDY_DRAIN_ENV); for seed in $(STUDY_SEEDS); do \
		[ ! -e $(STUDY)/.study-stop ] || { echo "stopped (make study-stop)"; exit 130; }; \
		[ ! -e $(STUDY_DRAIN) ] || { echo "drained (make study-drain)"; exit 130; }; \
		$(BIN)/python -m $(STUDY_JOBS) data_dir=$(DATA_DIR) seed=$$seed $(STUDY_ARGS) || { status=$$?; \
			[ -n "$(STUDY_KEEP_GOING)" ] && [ $$status -ne 130 ] && [ ! -e $(STUDY)/.study-stop ] && \
				[ ! -e $(STUDY_DRAIN) ] || exit $$status; }; \
	done

study-background:  ## `make study` under nohup, and a loop that commits each finished run's results.json every 5 minutes
	@if [ -e $(STUDY)/.study-pid ] && kill -0 $$(cat $(STUDY)/.study-pid) 2>/dev/null; then \
		echo "error: a study of this checkout runs (pid $$(cat $(STUDY)/.study-pid)); make study-stop first" >&2; exit 1; fi
	rm -f $(STUDY)/.study-stop $(STUDY_DRAIN)
	nohup sh -c 'echo $$$$ > $(STUDY)/.study-pid; \
		$(MAKE) study STUDY_ARGS="$(STUDY_ARGS)" STUDY_WORKERS=$(STUDY_WORKERS) > $(STUDY)/study.log 2>&1 & study=$$!; \
		n=0; while kill -0 $$study 2>/dev/null; do sleep 10; n=$$((n + 1)); [ $$((n % 30)) -ne 0 ] || $(MAKE) study-commit; done; \
		$(MAKE) study-commit' > $(STUDY)/commit.log 2>&1 &
	@echo "study: $(STUDY)/study.log (workers: $(STUDY)/study-worker*.log), commits: $(STUDY)/commit.log; stop: make study-stop"

study-stop:  ## stop this checkout's study (pilot, grid, workers): a running job ends as interrupted and the next launch resumes it
	@touch $(STUDY)/.study-stop; sent=; idle=0; \
	for i in $$(seq 1200); do \
		left=$$(grep -lxzF '$(STUDY_ENV)' /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3); \
		if [ -z "$$left" ]; then idle=$$((idle + 1)); [ $$idle -lt 3 ] || break; sleep 0.5; continue; fi; idle=0; \
		for pid in $$left; do \
			args=$$(ps -o args= -p $$pid) && parent=$$(ps -o args= -p $$(ps -o ppid= -p $$pid)) || continue; \
			exe=$${args%% *}; pexe=$${parent%% *}; \
			case "$${exe##*/}" in python*) ;; *) continue;; esac; \
			case "$${pexe##*/}" in python*) continue;; esac; \
			case " $$sent " in *" $$pid "*) continue;; esac; \
			kill -TERM $$pid 2>/dev/null && sent="$$sent $$pid" && echo "SIGTERM to $$pid: $$args"; \
		done; \
		sleep 0.5; \
	done; \
	[ -z "$$left" ] || { echo "error: still running after 10 minutes: $$left" >&2; exit 1; }; \
	if [ -e $(STUDY)/.study-pid ] && kill -0 $$(cat $(STUDY)/.study-pid) 2>/dev/null; then \
		echo "waiting for the commit loop's last commit"; \
		while kill -0 $$(cat $(STUDY)/.study-pid) 2>/dev/null; do sleep 1; done; \
	fi; \
	echo "stopped: nothing of $(STUDY)'s study runs"

study-drain:  ## let this checkout's running study jobs finish and start no other; returns once none runs (and the last commit is made)
	@touch $(STUDY_DRAIN); echo "draining: the running jobs finish, no other starts (make study-stop stops them now)"; \
	n=0; while grep -lqxzF '$(STUDY_ENV)' /proc/[0-9]*/environ 2>/dev/null; do \
		[ $$((n % 60)) -ne 0 ] || echo "$$(date +%T) training: $$(grep -l '"status": "running"' \
			$$(find $(STUDY)/runs $(STUDY)/pilot -name results.json 2>/dev/null) /dev/null | xargs -r -n1 dirname | tr '\n' ' ')"; \
		n=$$((n + 1)); sleep 1; \
	done; \
	if [ -e $(STUDY)/.study-pid ] && kill -0 $$(cat $(STUDY)/.study-pid) 2>/dev/null; then \
		echo "waiting for the commit loop's last commit"; \
		while kill -0 $$(cat $(STUDY)/.study-pid) 2>/dev/null; do sleep 1; done; \
	fi; \
	echo "drained: nothing of $(STUDY)'s study runs"

# README.md without the study's summary block (the part study-commit never commits)
README_SANS_SUMMARY := sed '\%^<!-- summary of $(STUDY).md: begin -->$$%,\%^<!-- summary of $(STUDY).md: end -->$$%d'

study-commit:  ## commit the study's newly completed runs (results.json only) with the page and README summary rebuilt from them
	@done=$$(grep -l '"status": "completed"' $$(find $(STUDY)/runs $(STUDY)/pilot -name results.json 2>/dev/null) /dev/null); \
	new=$$([ -z "$$done" ] || git ls-files --others --exclude-standard --modified -- $$done); \
	if [ -n "$$new" ]; then \
		paths="$$new"; \
		if echo "$$done" | grep -q "^$(STUDY)/runs/"; then \
			$(MAKE) --no-print-directory study-page > /dev/null || exit 1; \
			paths="$$paths $(STUDY).md $(STUDY)/report.tex $(STUDY)/report.json $(STUDY)/tables $(STUDY)/figures"; \
			if [ "$$(git show HEAD:README.md | $(README_SANS_SUMMARY))" = "$$($(README_SANS_SUMMARY) README.md)" ]; then \
				paths="$$paths README.md"; \
			else echo "README.md has edits outside the study's summary: left out of this commit" >&2; fi; \
		fi; \
		paths=$$(for p in $$paths; do [ -e $$p ] && echo $$p; done); \
		git add -- $$paths && git commit -q -m "study: $$(echo $$new | wc -w) finished run(s)" -- $$paths && echo "committed $$new"; \
	fi

study-page:  ## docs/results/minilm.md from the committed runs, and its summary in README.md
	$(BIN)/python -m aotpt.report runs_dir=$(STUDY)/runs out_dir=$(STUDY) page=$(STUDY).md sweep=study_minilm \
		pilot_dir=$(STUDY)/pilot data_dir=$(DATA_DIR) 'title=AoT P-Tuning on MiniLM: the study' \
		"commands=['make study-background STUDY_WORKERS=2']" 'benchmarks=[sweep]' summary=README.md completed_only=true

bench:  ## training step time of AoT vs full fine-tuning on MiniLM (batch 32 x 128)
	$(BIN)/python -m aotpt.bench $(ARGS)

bench-serving:  ## export + serving modes on a RoBERTa-base-sized random backbone
	$(BIN)/python -m aotpt.bench suite=serving $(ARGS)

bench-server:  ## load test of python -m aotpt.serve: bare backbone, 1..1,000 tasks, every tier (MiniLM)
	$(BIN)/python -m aotpt.bench suite=server $(ARGS)

lint:
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

format:
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests

clean:
	rm -rf logs outputs multirun .cache .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
