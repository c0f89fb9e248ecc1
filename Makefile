# nibble — the two entry points of README.md, plus the pieces they are made of.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
MODEL ?= models/demo models/demo-moe

.PHONY: all deps configure build test run clean fuzz

all: build

deps:
	@scripts/install-deps

configure:
	@cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS) >/dev/null

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

test: deps build
	@scripts/run-tests $(BUILD)

run: deps build
	@scripts/run-demo $(BUILD) $(MODEL)

fuzz: deps
	@scripts/run-fuzz

clean:
	rm -rf $(BUILD) build-fuzz
