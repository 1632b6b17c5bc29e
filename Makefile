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

.PHONY: setup build demo test gpu-check lint fmt cargo-test pytest bench clean wheel wheel-test sdist-test

setup: $(DEPS)

# Dependencies are read from pyproject.toml (runtime + the `test` extra), so they are listed once.
$(DEPS): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
	print('\n'.join(['maturin>=1.5,<2', 'setuptools', 'wheel'] + p['dependencies'] + p['optional-dependencies']['test']))" \
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
	# the code's shape: functions <= 80 lines and <= 12 parameters, a reason on every local import, and
	# no ignore_imports in the contracts above (an AST check, tests/test_code_shape.py)
	$(PY) -m pytest -q -p no:cacheprovider tests/test_code_shape.py
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

# On a CUDA machine only (about 5 minutes): the CUDA tests, a bf16 FSDP step, export, sampling on the GPU.
gpu-check: build
	PY=$(PY) bash benches/gpu_check.sh

# The product: an abi3 wheel (one file for every CPython >= 3.10) and an sdist, into dist/.
wheel: $(DEPS) $(RUST_SRC) pyproject.toml
	rm -rf dist
	$(VENV)/bin/maturin build --release --out dist
	$(VENV)/bin/maturin sdist --out dist
	@ls -l dist

# The wheel in a fresh virtual environment, with no source tree on the path: tests/wheel_smoke.py runs
# from a temporary directory. A second copy of torch and its CUDA wheels would need about 6 GB more disk
# (CI once ran out of space there), so the smoke venv installs the ddm wheel alone and borrows the setup
# venv's third-party packages through a .pth file. Lines of a .pth only extend sys.path: the setup venv's
# own .pth files, the editable ddm among them, are not read, and wheel_smoke.py checks that ddm comes from
# the smoke venv's site-packages. The wheel's declared dependencies (with the gpt2 extra) are resolved
# against the local wheel cache first, as a fresh `pip install` would resolve them, without installing.
SMOKE_VENV ?= $(abspath target/wheel-smoke-venv)
wheel-test: wheel
	rm -rf $(SMOKE_VENV)
	python3 -m venv $(SMOKE_VENV)
	$(SMOKE_VENV)/bin/python -m pip install -q --dry-run --ignore-installed --no-index --find-links $(WHEELS) \
	  "$$(ls dist/ddm-*.whl)[gpt2]"
	$(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > \
	  "$$($(SMOKE_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/_ddm_setup_venv.pth"
	$(SMOKE_VENV)/bin/python -m pip install -q --no-deps --no-index "$$(ls dist/ddm-*.whl)"
	tmp=$$(mktemp -d) && cp tests/wheel_smoke.py $$tmp/ && cd $$tmp && \
	  env -u PYTHONPATH $(SMOKE_VENV)/bin/python wheel_smoke.py; rc=$$?; rm -rf $$tmp; exit $$rc

# The sdist builds the same wheel from nothing (a full release build of the Rust core: minutes).
sdist-test: wheel
	rm -rf target/sdist-wheel
	$(PIP) wheel -q --no-deps --no-index --find-links $(WHEELS) -w target/sdist-wheel dist/ddm-*.tar.gz
	$(PY) -c "import sys, zipfile; names = lambda p: sorted(zipfile.ZipFile(p).namelist()); \
	a, b = sys.argv[1:]; assert names(a) == names(b), set(names(a)) ^ set(names(b)); \
	print(f'same {len(names(a))} files in the wheel built from the sdist')" \
	  "$$(ls dist/ddm-*.whl)" "$$(ls target/sdist-wheel/ddm-*.whl)"

# compare.py: the kernels against torch and the floor (a read pass with the step's threads);
# eval_variance.py: the bound's Monte-Carlo error by design; user_wait.py: the network call and the
# sampling loop under variants of this tree (the old spinning OpenMP wait policy, the default, opt-in bf16),
# on the demo model (trained first when runs/demo is missing).
bench: build
	$(PY) benches/compare.py --out benches/results/latest.json
	test -d runs/demo || $(MAKE) demo
	cat /proc/loadavg
	$(PY) benches/eval_variance.py runs/demo --out benches/results/eval_variance.json
	$(PY) benches/user_wait.py --checkpoint runs/demo --out benches/results/user_wait.json
	cat /proc/loadavg

clean:
	cargo clean
	rm -rf $(VENV) python/ddm/_core*.so
