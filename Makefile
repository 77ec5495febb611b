# The two commands of the README: `make demo` and `make test`. Both create the
# virtual environment .venv on first use (Python 3.11, everything from PyPI), with
# exactly the versions and hashes of requirements.lock (see docs/operations.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
LOCK   := requirements.lock
# The container's lock: the service's dependencies only, at the same versions as $(LOCK).
SERVICE_LOCK := requirements-service.lock
# One command regenerates the locks, so `lock` and `lock-check` cannot drift apart.
COMPILE = $(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command 'make lock' --quiet
COMPILE_LOCK = $(COMPILE) --extra dev
COMPILE_SERVICE_LOCK = $(COMPILE) --constraint $(LOCK)

.PHONY: demo test lint bench browser clean lock lock-check image

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --require-hashes -r $(LOCK)
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# After changing a dependency in pyproject.toml: pins the new set (and keeps every other
# pin as it was; `make lock UPGRADE=--upgrade` moves them all to their newest versions).
lock: $(VENV)/.installed
	$(COMPILE_LOCK) $(UPGRADE) -o $(LOCK)
	$(COMPILE_SERVICE_LOCK) -o $(SERVICE_LOCK)

# Fails when pyproject.toml and the locks disagree (a dependency added, removed or re-pinned).
# $(call check_lock,LOCK FILE,COMPILE COMMAND): regenerate a copy (same pins preferred), compare.
check_lock = tmp=$$(mktemp) && cp $(1) $$tmp && { $(2) -o $$tmp && diff -u $(1) $$tmp; status=$$?; \
	rm -f $$tmp; [ $$status -eq 0 ] || { echo "$(1) is out of date: run make lock" >&2; exit 1; }; }

lock-check: $(VENV)/.installed
	@$(call check_lock,$(LOCK),$(COMPILE_LOCK))
	@$(call check_lock,$(SERVICE_LOCK),$(COMPILE_SERVICE_LOCK))

# The service's container image (needs a Docker engine).
image:
	docker build -t refrain:latest .

demo: $(VENV)/.installed
	$(BIN)/refrain demo

test: $(VENV)/.installed browser lint
	$(BIN)/python -m pytest -q

# ruff over the repository and mypy over the library packages (.ci/typecheck.py says why it needs a view).
lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/python .ci/typecheck.py

# The analyst-page test drives Debian's headless Chromium (a browser download by a test
# tool does not work here); installed if missing (needs root, as on CI).
browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

# Needs the real-music corpus: bash ../shared/data/fetch-music.sh
bench: $(VENV)/.installed
	$(BIN)/python bench/accuracy.py $(HOME)/.cache/refrain-music --catalogue 150 --negatives 50

clean:
	rm -rf $(VENV) .pytest_cache
