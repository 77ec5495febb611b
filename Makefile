# The two commands of the README: `make demo` and `make test`. Both create the
# virtual environment .venv on first use (Python 3.11, everything from PyPI).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test bench browser clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/refrain demo

test: $(VENV)/.installed browser
	$(BIN)/python -m pytest -q

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
