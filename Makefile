# Talking Head Cam — the commands a newcomer runs: `make demo`, `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
UNIT_DIR := $(HOME)/.config/systemd/user
CONFIG_DIR := $(or $(XDG_CONFIG_HOME),$(HOME)/.config)/talking-head-cam
SYSTEMCTL ?= systemctl
# The team's tools (eval, bench, soak) and the test support live in tests/, apart from the product.
TOOLS := PYTHONPATH=tests $(BIN)/python

.PHONY: install install-dev check-python demo run test soak bench bench-webrtc eval lint config \
	install-service uninstall-service clean

# Python 3.11 or 3.12: mediapipe 0.10.14, which ships the face models, has no wheel for 3.13.
# Checked before a venv is made, in one line (never pip's resolver traceback).
PY_VERSION = $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
PY_NEEDS = talking-head-cam needs Python 3.11 or 3.12, and $(PYTHON) is \
	$(if $(PY_VERSION),Python $(PY_VERSION),not found) (mediapipe 0.10.14, which ships the face \
	models, has no wheel for 3.13): install one, e.g. `uv python install 3.12`, then \
	`make PYTHON=python3.12`
check_python = $(if $(filter 3.11 3.12,$(PY_VERSION)),,$(error $(PY_NEEDS)))

check-python:
	@$(check_python)echo "$(PYTHON): Python $(PY_VERSION), supported"

# What gets installed: the core alone (the CPU path: `make demo`, `make run`); the GPU path's
# torch, ONNX and TFLite tools (the `engines` extra, gigabytes) only where `nvidia-smi -L`
# lists a GPU, or with ENGINES=1; the test tools and the engines for `make test` and the
# other team targets, since the tests exercise the torch path too. One stamp per set, so that
# asking for a larger set after a smaller one really installs it.
ENGINES ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
install: $(VENV)/.installed-core $(if $(filter-out 0,$(ENGINES)),$(VENV)/.installed-engines)
install-dev: $(VENV)/.installed-dev

$(BIN)/python:
	$(check_python)$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed-core: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-engines: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[engines]'
	touch $@ $(VENV)/.installed-core

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,engines]'
	touch $@ $(VENV)/.installed-core $(VENV)/.installed-engines

demo: install
	$(BIN)/talking-head-cam demo --out out/demo.mp4 $(if $(DRIVER),--driver $(DRIVER))

run: install
	$(BIN)/talking-head-cam --config config.yaml run

# Everything, the QEMU end-to-end tests (tests/e2e) included: they skip with the reason when
# qemu/busybox/apt are missing here, and fail instead with THC_E2E_REQUIRED=1 (.ci/run).
test: install-dev
	$(BIN)/python -m pytest -q --durations=12

# Only the end-to-end tests in a QEMU guest (tests/e2e): the real v4l2loopback module,
# systemd as PID 1 and headless Chromium using the camera; about 11 min without KVM. A guest
# that cannot be built is an error here.
.PHONY: e2e
e2e: install-dev
	THC_E2E_REQUIRED=1 $(BIN)/python -m pytest -q tests/e2e

# The long soak: the whole daemon for 100,000 frames with every kind of fault in turn (about
# 20 min on 2 cores) → reports/soak.md with plots; exits 1 when unhealthy. The short form
# runs in `make test`. MALLOC_ARENA_MAX as the systemd units set it. Options: --help
soak: install-dev
	MALLOC_ARENA_MAX=2 $(TOOLS) -m thc_tools.soak --frames 100000 --out reports

# Per-stage latency, loop fps and CPU use (default and 1 OpenCV thread), the daemon paced at
# the output rate, our warp vs scikit-image's; about 30 s. Options: python -m thc_tools bench --help
bench: install-dev
	$(TOOLS) -m thc_tools --config config.yaml bench

# The GPU path's networks: ONNX export (checked with onnxruntime against torch) into the
# engine cache, then TensorRT engines where TensorRT and an NVIDIA GPU are present.
.PHONY: engines
engines: $(VENV)/.installed-engines
	$(BIN)/talking-head-cam --config config.yaml engines

# The GPU checks on a lent GPU machine (its Python 3.12 lacks these): `make gpu-wheels` here,
# then `bash tests/gpu_check.sh` there with .whl carried (see that script).
GPU_WHEELS := mediapipe==0.10.14 protobuf==4.25.9 pydantic==2.14.4 pydantic-core==2.50.5 \
	annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 tflite==2.18.0
.PHONY: gpu-wheels
gpu-wheels:
	rm -rf .whl
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)

# Remote mode's round trip (browser camera frame → avatar frame back, median and p95) with a
# real daemon and headless Chromium on this machine; about 30 s. Needs chromium, chromium-driver.
bench-webrtc: install-dev
	$(BIN)/python tests/bench_webrtc.py

# Dev clips × a few avatars → reports/eval.md + plots, and self-reenactment (each clip's frame 0
# animated by the clip, scored against the real frames) → reports/reenact.md + contact sheets,
# and scripted poses on a photo, a painting and a cartoon → reports/poses.png (all skip when
# ../shared/data is absent).
DATA ?= ../shared/data
eval: install-dev
	$(TOOLS) -m thc_tools.evaluate --config config.yaml --data $(DATA) --out reports
	$(TOOLS) -m thc_tools.reenact --config config.yaml --data $(DATA) --out reports
	$(TOOLS) -m thc_tools.poses --data $(DATA) --out reports

# ruff, and the import contracts of pyproject.toml (the layers, no cycles; tests/test_architecture.py
# runs them in `make test` too).
lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	PYTHONPATH=tests $(BIN)/lint-imports

# Regenerate config.yaml from the config model (tests fail when they disagree).
config: install
	$(BIN)/talking-head-cam config-doc > config.yaml

install-service: install
	mkdir -p $(HOME)/.local/bin $(UNIT_DIR) $(CONFIG_DIR)
	ln -sf $(abspath $(BIN))/talking-head-cam $(HOME)/.local/bin/talking-head-cam
	install -m 644 systemd/talking-head-cam.service $(UNIT_DIR)/talking-head-cam.service
	test -f $(CONFIG_DIR)/config.yaml || install -m 644 config.yaml $(CONFIG_DIR)/config.yaml
	$(SYSTEMCTL) --user daemon-reload && $(SYSTEMCTL) --user enable --now talking-head-cam.service \
		|| echo "could not reach the systemd user manager; run: systemctl --user enable --now talking-head-cam"
	@echo
	@echo "Config: $(CONFIG_DIR)/config.yaml  (apply edits: systemctl --user reload talking-head-cam)"
	@echo "One root step for the virtual camera (once per machine):"
	@echo "  sudo apt install v4l2loopback-dkms && sudo cp systemd/v4l2loopback.conf /etc/modprobe.d/ \\"
	@echo "    && sudo cp systemd/modules-load.conf /etc/modules-load.d/v4l2loopback.conf && sudo modprobe v4l2loopback"
	@echo "Then check everything: $(HOME)/.local/bin/talking-head-cam doctor"

uninstall-service:
	-$(SYSTEMCTL) --user disable --now talking-head-cam.service
	rm -f $(UNIT_DIR)/talking-head-cam.service
	test ! -L $(HOME)/.local/bin/talking-head-cam || rm -f $(HOME)/.local/bin/talking-head-cam
	-$(SYSTEMCTL) --user daemon-reload
	@echo "removed the user unit; your config in $(CONFIG_DIR) is kept"

clean:
	rm -rf out build *.egg-info .pytest_cache .ruff_cache
