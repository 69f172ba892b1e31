# The two commands: `make demo` and `make test`. Both create .venv on a fresh machine.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned and installed first: an unpinned resolve would pull a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0

.PHONY: demo lint test install install-dev render-deps bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The torch-free client is its own package (clients/genba-client); genba depends on it by name,
# which no index serves, so it is installed from the checkout first.
$(VENV)/.installed: $(BIN)/python pyproject.toml clients/genba-client/pyproject.toml
	$(BIN)/pip install -q $(TORCH_PIN) numpy
	$(BIN)/pip install -q -e clients/genba-client
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed render-deps
install-dev: $(VENV)/.installed-dev

# Camera rendering (genba.envs.render) uses EGL: Mesa's software EGL on a machine without a GPU.
# The libraries are system packages; installed with apt-get when missing (sudo unless root).
RENDER_PKGS := libegl1 libegl-mesa0 libgl1-mesa-dri
render-deps:
	@if ldconfig -p | grep -q 'libEGL_mesa.so.0' && ldconfig -p | grep -q 'libEGL.so.1'; then :; else \
	  echo "installing $(RENDER_PKGS) for offscreen rendering"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q $(RENDER_PKGS); fi

demo: install
	$(BIN)/genba demo

# Seconds: the layer contracts of pyproject.toml, checked on the real imports, then ruff.
lint: install-dev
	$(BIN)/lint-imports
	$(BIN)/ruff check src tests benchmarks

test: lint render-deps
	OMP_NUM_THREADS=1 MUJOCO_GL=disable $(BIN)/python -m pytest -q

clean:
	rm -rf runs/ .pytest_cache
