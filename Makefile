# Every target that runs something calls `install` first: a fresh clone needs only `make serve`
# or `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU wheel of torch lies on this machine's disk; pinning it before the project keeps pip from
# resolving a bare `torch` to a CUDA build of several GB.
TORCH_PIN ?= torch==2.13.0

.PHONY: install serve test test-fast lint typecheck pytest bench drill tour error-words clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_PIN)"
	$(BIN)/python -m pip install -q -e ".[test]" "$(TORCH_PIN)"
	# The status page's browser tests drive a real Chromium: Debian's package (Playwright's own
	# download needs the internet), installed only when missing.
	test -x /usr/bin/chromium || apt-get install -y chromium || (apt-get update && apt-get install -y chromium)
	touch $(STAMP)

serve: install
	$(BIN)/genvisor models make-tiny --if-missing
	$(BIN)/genvisor serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check supervisor actors
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy supervisor actors

# Two test processes, a test file each at a time (its module fixtures, servers and Ray cluster
# stay on one process): on 2 cores the suite's waits on servers and workers overlap (832 -> 613 s
# here). TEST_JOBS=0 runs it in this process.
TEST_JOBS ?= 2

pytest: install
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadfile

test: lint typecheck pytest

# The inner loop: every test not marked slow (no tiny-Wan run, no server subprocess).
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

bench: install
	@for b in bench/bus.py bench/categorize.py bench/overhead.py bench/recovery.py bench/scale.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

drill: install
	$(BIN)/python bench/drill.py

# The README's five-minute tour, every command in order, in a fresh GENVISOR_HOME.
tour: install
	$(BIN)/python bench/readme_tour.py

# The categorizer's word model (config/error_words.json), trained again from tests/data's
# labelled error texts after they change (a test fails until it is).
error-words: install
	$(BIN)/python -c "from supervisor.errors.word_model import main; main()"

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
