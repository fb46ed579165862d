# Thin wrapper over meson so that README's two commands work on a fresh Debian 12 machine.
#   make serve  - install build dependencies, build, start the daemon on its defaults
#   make test   - install build and test dependencies, build, run every test suite
BUILD ?= build
PYTHON ?= .venv/bin/python
SBX_BIN := $(abspath $(BUILD))/sbx

.PHONY: all setup-build setup-test build serve deb test test-format test-unit test-py test-js \
	test-vm format clean

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

# Formatting, unit tests and fuzz-corpus replays (meson), the SDK suites against a real
# daemon, then the cgroup-dependent tests again on a pure cgroup v2 kernel in a VM.
test: setup-test build
	$(MAKE) --no-print-directory test-format test-unit test-py test-js test-vm

test-format:
	clang-format-14 --dry-run --Werror $(C_SOURCES)

format:
	clang-format-14 -i $(C_SOURCES)

test-unit:
	meson test -C $(BUILD) --print-errorlogs

test-py:
	SBX_BIN=$(SBX_BIN) $(PYTHON) -m pytest -p no:cacheprovider tests/integration/py tests/security

test-js:
	cd tests/integration/js && SBX_BIN=$(SBX_BIN) npm test

test-vm:
	scripts/vm/run.sh $(BUILD)

clean:
	rm -rf $(BUILD) build-deb
