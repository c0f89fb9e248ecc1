# nibble — the two entry points of README.md, plus the pieces they are made of.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
MODEL ?= models/demo models/demo-moe

.PHONY: all deps test-deps configure build test run clean fuzz

all: build

deps:
	@scripts/install-deps

# The tests also need a headless Chromium (the web page test) and a Python venv with the OpenAI
# client (the server tests).
test-deps:
	@scripts/install-deps --browser
	@scripts/test-venv $(BUILD)/pyvenv

configure:
	@cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS) >/dev/null

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

test: test-deps build
	@scripts/run-tests $(BUILD)

run: deps build
	@scripts/run-demo $(BUILD) $(MODEL)

fuzz: deps
	@scripts/run-fuzz

clean:
	rm -rf $(BUILD) build-fuzz
