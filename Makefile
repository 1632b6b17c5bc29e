# The README's two quick-start commands are `make demo` and `make test`. Both set everything up from
# nothing (a .venv beside this file, the Python dependencies, the Rust extension in release mode) and are
# quick on a second run: the steps below are stamped and rerun only when their inputs change.

VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
DEPS    := $(VENV)/.ddm-deps
BUILT   := $(VENV)/.ddm-built
WHEELS  ?= $(HOME)/.cache/ddm/wheels
RUST_SRC := $(wildcard rust/src/*.rs rust/src/*/*.rs) Cargo.toml
export PYO3_PYTHON := $(abspath $(PY))

.PHONY: setup build demo test lint fmt cargo-test pytest bench clean

setup: $(DEPS)

# Dependencies are read from pyproject.toml (runtime + the `test` extra), so they are listed once.
$(DEPS): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
	print('\n'.join(['maturin>=1.5,<2'] + p['dependencies'] + p['optional-dependencies']['test']))" \
	  > $(VENV)/requirements.txt
	# PyPI's torch (with its CUDA libraries) is several GB and the registry proxy sends it uncacheable,
	# so wheels are kept in a local directory: later setups install from it with no network at all.
	$(PIP) install -q --no-index --find-links $(WHEELS) -r $(VENV)/requirements.txt 2>/dev/null || \
	  { $(PIP) download -q -d $(WHEELS) -r $(VENV)/requirements.txt && \
	    $(PIP) install -q --no-index --find-links $(WHEELS) -r $(VENV)/requirements.txt; }
	touch $@

build: $(BUILT)

$(BUILT): $(DEPS) $(RUST_SRC) pyproject.toml
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release -q
	touch $@

demo: build
	$(PY) -m ddm.demo

# Needs the built extension: mypy.stubtest checks the hand-written python/ddm/_core.pyi against it.
lint: build
	cargo fmt --all -- --check
	cargo clippy --all-targets -q -- -D warnings
	cargo clippy --lib --features python -q -- -D warnings
	$(VENV)/bin/ruff check python tests benches
	$(VENV)/bin/ruff format --check python tests benches
	# the layer order and no import cycles ([tool.importlinter] in pyproject.toml); PYTHONPATH so that
	# it reads the sources without a built extension
	PYTHONPATH=python $(VENV)/bin/lint-imports
	# _core.pyi against the built extension
	$(PY) -m mypy.stubtest ddm._core

fmt: $(DEPS)
	cargo fmt --all
	$(VENV)/bin/ruff format python tests benches
	$(VENV)/bin/ruff check --fix python tests benches

cargo-test:
	cargo test -q

pytest: build
	$(PY) -m pytest -q

test: build lint cargo-test pytest

bench: build
	$(PY) benches/compare.py --out benches/results/latest.json

clean:
	cargo clean
	rm -rf $(VENV) python/ddm/_core*.so
