# oaksend: the two set-up commands are `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: lock install demo lint test test-fast chaos bench bench-latency bench-memory bench-limits bench-campaign bench-enqueue bench-async bench-scale bench-recovery compose-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,lint]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install oaksend with its test tools

demo: $(STAMP)  ## run the whole path on SQLite, a local or embedded Redis and the fake API
	$(BIN)/python scripts/demo.py

# mypy cannot follow the editable install (an import hook), and the source folders are not laid out like
# the package they install as (worker/ is oaksend.worker): MYPY_TREE is a tree of symlinks in the package's
# shape, pyproject's [tool.mypy] mypy_path, so `mypy -p oaksend` checks every module under its real name.
MYPY_TREE := $(VENV)/mypy-tree

lint: $(STAMP)  ## ruff and mypy, zero findings
	$(BIN)/ruff check oaksend worker models migrations sandbox
	rm -rf $(MYPY_TREE) && mkdir -p $(MYPY_TREE)/oaksend
	ln -s $(CURDIR)/oaksend/*.py $(CURDIR)/oaksend/contrib $(CURDIR)/oaksend/web $(MYPY_TREE)/oaksend/
	for d in worker models migrations sandbox; do ln -s $(CURDIR)/$$d $(MYPY_TREE)/oaksend/$$d; done
	$(BIN)/mypy -p oaksend
	cd tests/typing && $(CURDIR)/$(BIN)/mypy --config-file mypy.ini user_program.py

# Test files run in TEST_WORKERS processes (pytest-xdist, a file per process at a time): most of a
# test's time is spent waiting for other processes, so two keep both cores busy. Each worker has its
# own Redis and PostgreSQL databases (tests/support.py). TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),-p no:xdist,-n $(TEST_WORKERS) --dist loadfile)

test: $(STAMP)  ## the whole suite against real Redis, PostgreSQL and SQLite
	$(BIN)/pytest $(XDIST)

# The liveness runs time a worker's silence and recovery in seconds: they run alone, not beside the storm.
chaos: $(STAMP)  ## the long fault runs: a fault storm, database outages, skewed clocks, Redis stalls, paused and cut-off workers
	$(BIN)/pytest $(XDIST) -m chaos tests/faults --ignore=tests/faults/test_liveness.py
	$(BIN)/pytest -p no:xdist -m chaos tests/faults/test_liveness.py

test-fast: $(STAMP)  ## pure functions only: no services needed
	$(BIN)/pytest tests/unit

bench: $(STAMP)  ## end-to-end throughput vs bare Celery and a plain Celery + httpx task, and latency (prints figures)
	$(BIN)/python -m bench.pipeline $(BENCH_ARGS)

bench-latency: $(STAMP)  ## throughput of 2 default workers against an API answering in 200 ms
	$(BIN)/python -m bench.pipeline --skip-baseline --latency-ms 200 --messages 20000 $(BENCH_ARGS)

bench-memory: $(STAMP)  ## worker and dispatcher RSS growth over 200,000 messages (long)
	$(BIN)/python -m bench.pipeline --skip-baseline --rss-messages 200000 $(BENCH_ARGS)

bench-limits: $(STAMP)  ## per-chatbot limits held by 4 workers, and fairness latency (prints figures)
	$(BIN)/python -m bench.limits

bench-campaign: $(STAMP)  ## 100,000 recipients from CSV: seconds to schedule, peak memory, latency meanwhile
	$(BIN)/python -m bench.campaign

bench-scale: $(STAMP)  ## the dispatcher with 50,000 chatbots holding 1,000,000 future messages (prints figures)
	$(BIN)/python -m bench.scale

bench-async: $(STAMP)  ## AsyncProducer.send in a caller's AsyncSession vs a bare INSERT, PostgreSQL (prints figures)
	$(BIN)/python -m bench.async_enqueue $(BENCH_ARGS)

bench-enqueue: $(STAMP)  ## send_many of 100,000 and Producer.send p99 on PostgreSQL vs raw INSERT/COPY (prints figures)
	$(BIN)/python -m bench.enqueue

bench-recovery: $(STAMP)  ## seconds until a SIGKILLed worker's messages are sent by another, over 5 kills (prints figures)
	$(BIN)/python -m bench.recovery $(BENCH_ARGS)

compose-check:  ## validate docker-compose.yml (Debian's docker-compose package)
	docker-compose config -q

clean:
	rm -rf var .pytest_cache oaksend.db oaksend.db-*

lock:  ## pin every runtime dependency with hashes into requirements.lock (the image installs from it)
	$(BIN)/python -m pip install -q 'uv>=0.5,<1'
	$(BIN)/uv pip compile pyproject.toml --generate-hashes --python-version 3.12 --custom-compile-command "make lock" -o requirements.lock
