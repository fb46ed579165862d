# Thin wrapper over meson so that README's two commands work on a fresh Debian 12 machine.
#   make serve  - install build dependencies, build, start the daemon on its defaults
#   make test   - install build and test dependencies, build, run every test suite
BUILD ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 60
PYTHON ?= .venv/bin/python
SBX_BIN := $(abspath $(BUILD))/sbx

.PHONY: all setup-build setup-test build serve deb test test-format test-unit test-sanitize \
	test-fuzz test-py test-js test-vm format clean

all: build

setup-build:
	scripts/setup.sh build

setup-test:
	scripts/setup.sh test

$(BUILD)/build.ninja:
	meson setup $(BUILD)

build: setup-build $(BUILD)/build.ninja
	ninja -C $(BUILD)

serve: build
	exec $(BUILD)/sbx serve

# sbx_<version>_<arch>.deb in the checkout (DEB_VERSION=... overrides the version).
deb: setup-build
	scripts/deb.sh

C_SOURCES = $(shell git ls-files 'src/*.[ch]' 'tests/unit/*.[ch]' 'fuzz/*.[ch]')

# Formatting, unit tests and fuzz-corpus replays (meson), the same under ASan and UBSan, the
# SDK suites against a real daemon, every fuzz target under libFuzzer, then the
# cgroup-dependent tests again on a pure cgroup v2 kernel in a VM.
test: setup-test build
	$(MAKE) --no-print-directory test-format test-unit test-sanitize test-py test-js test-fuzz \
		test-vm

test-format:
	clang-format-14 --dry-run --Werror $(C_SOURCES)

format:
	clang-format-14 -i $(C_SOURCES)

test-unit:
	meson test -C $(BUILD) --print-errorlogs

# The unit tests and the corpus replays built by gcc with ASan and UBSan (fatal: meson.build),
# LeakSanitizer checking each forked test and the spawner test_spawner forks
# (tests/unit/harness.h). ASAN_OPTIONS adds two checks the defaults leave out: stack memory
# used after its function returned, and str* arguments checked up to their NUL. The tests that
# spawn sandboxes need no option to turn anything off: a sandbox's setup child ends in exec or
# _exit, so LeakSanitizer never runs there; its PID 1 is bash (test_sandbox) or this build's
# agent (test_spawner), which gets the spawner's fixed environment, not these options, and is
# only ever SIGKILLed.
test-sanitize: $(ASAN_BUILD)/build.ninja
	ninja -C $(ASAN_BUILD)
	ASAN_OPTIONS=detect_stack_use_after_return=1:strict_string_checks=1 \
	UBSAN_OPTIONS=print_stacktrace=1 meson test -C $(ASAN_BUILD) --print-errorlogs

$(ASAN_BUILD)/build.ninja:
	meson setup $(ASAN_BUILD) -Db_sanitize=address,undefined -Db_lundef=false

# Every fuzz target under libFuzzer for FUZZ_SECONDS each (scripts/fuzz.sh). The whole tree is
# built, so that clang's warnings are checked too.
test-fuzz: $(FUZZ_BUILD)/build.ninja
	ninja -C $(FUZZ_BUILD)
	scripts/fuzz.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

$(FUZZ_BUILD)/build.ninja:
	CC=clang-14 meson setup $(FUZZ_BUILD) -Dfuzzing=true

test-py:
	SBX_BIN=$(SBX_BIN) $(PYTHON) -m pytest -p no:cacheprovider tests/integration/py tests/security

test-js:
	cd tests/integration/js && SBX_BIN=$(SBX_BIN) npm test

test-vm:
	scripts/vm/run.sh $(BUILD)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD) build-deb
