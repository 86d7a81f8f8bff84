# Tern: one command to run, one command to test.
#   make run    installs what the build needs (clang/libclang for RocksDB), builds, runs `tern serve`
#   make test   installs what the build needs, then runs every test
#
# One cargo profile (release) for build, test and bench: RocksDB takes ~18
# minutes to compile on 2 cores and a second profile would double that. The
# target dir lives outside the clone so rebuilds reuse it; nothing depends on it.

export CARGO_TARGET_DIR ?= $(HOME)/.cache/tern-target
CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BIN := $(CARGO_TARGET_DIR)/release/tern
ARGS ?=

.PHONY: deps build run test lint fmt bench callgrind test-interop web chromium test-web

deps:
	@if ! command -v clang >/dev/null 2>&1 || ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1; then \
		echo "installing clang and libclang-dev (needed to build RocksDB)"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq clang libclang-dev; \
	fi
	@if ! command -v $(CARGO) >/dev/null 2>&1; then \
		echo "installing the Rust toolchain (rustup)"; \
		curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal; \
	fi

build: deps web
	$(CARGO) build --release --bin tern

run: build
	$(BIN) serve $(ARGS)

test: deps web
	$(CARGO) test --release --workspace
	tests/interop/run.sh
	$(MAKE) test-web
	$(MAKE) fuzz-ci

# Interop with clients no one here wrote (Python websockets, Node ws) against
# the release binary; installs their packages on first use, builds nothing.
test-interop:
	tests/interop/run.sh

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# The performance targets (docs/BENCHMARKS.md): builds server and loadgen,
# runs every scenario pinned as documented, prints figures against targets.
bench: deps
	$(CARGO) build --release -p tern -p tern-loadgen
	scripts/bench.sh

# Instructions per dm message and per group delivery on the shard and
# writer threads, counted by callgrind (docs/BENCHMARKS.md "Instructions per
# message"): noise-free, so a change to the message path can be compared
# before and after. `scripts/callgrind.sh OLD_BINARY` measures another build.
callgrind: deps
	@command -v valgrind >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq valgrind; }
	$(CARGO) build --release -p tern -p tern-loadgen
	scripts/callgrind.sh

# Crash soak (docs/RELIABILITY.md): SIGKILL/restart cycles under dm and
# group traffic, every acknowledged message checked after each restart.
# `make soak SOAK_CYCLES=200`; SOAK_SEED=<seed> replays a printed schedule.
SOAK_CYCLES ?= 50
.PHONY: soak
soak: deps
	SOAK_CYCLES=$(SOAK_CYCLES) $(CARGO) test --release --test crash_soak -- --nocapture

# Fuzzing (docs/RELIABILITY.md (Fuzzing)): cargo-fuzz + libFuzzer over the code
# that reads client bytes. Runs on the stable toolchain: RUSTC_BOOTSTRAP=1
# unlocks the -Z flags cargo-fuzz passes. Own target dir (sanitizer flags
# would otherwise rebuild the main one); the fuzz crate does not build RocksDB.
#   make fuzz-ci   every target for FUZZ_SECONDS (30) each; a crash fails
#   make fuzz      the same, 600 s per target
#   make fuzz-corpus  regenerate the committed seeds (fuzz/corpus/)
FUZZ_TARGETS ?= ws_frame handshake json_frame rkyv_frame token_verify
FUZZ_SECONDS ?= 30
FUZZ_TARGET_DIR ?= $(HOME)/.cache/tern-fuzz-target
FUZZ_WORK_DIR ?= $(HOME)/.cache/tern-fuzz-work
FUZZ_ENV := RUSTC_BOOTSTRAP=1 FUZZ_TARGET_DIR=$(FUZZ_TARGET_DIR) FUZZ_WORK_DIR=$(FUZZ_WORK_DIR)

.PHONY: fuzz-deps fuzz-build fuzz-ci fuzz fuzz-corpus

fuzz-deps: deps
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install --locked cargo-fuzz

fuzz-build: fuzz-deps
	cd fuzz && $(FUZZ_ENV) $(CARGO) fuzz build -a --target-dir $(FUZZ_TARGET_DIR)

fuzz-ci: fuzz-build
	$(FUZZ_ENV) fuzz/ci.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

fuzz:
	$(MAKE) fuzz-ci FUZZ_SECONDS=600

fuzz-corpus: deps
	cd fuzz && CARGO_TARGET_DIR=$(FUZZ_TARGET_DIR) $(CARGO) run --release --example gen_corpus

# The browser client (/app/) and dashboard (/admin/) in web/: TypeScript +
# Vite from the npm registry. The built assets (web/dist/www) are embedded in
# the binary by gateway-http/build.rs, so `make build` builds them first.
# Vite needs node >= 20.19: Debian's own nodejs is older, so one is installed
# only when none is present.
web:
	@if ! command -v npm >/dev/null 2>&1; then \
		echo "installing nodejs and npm (to build the web client)"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nodejs npm; \
	fi
	@node -e 'const [a,b]=process.versions.node.split(".").map(Number); if (a<20||(a===20&&b<19)) { console.error("node "+process.version+" is too old for Vite: install node >= 20.19"); process.exit(1) }'
	@if [ ! web/node_modules/.package-lock.json -nt web/package-lock.json ]; then cd web && npm ci --no-audit --no-fund; fi
	cd web && npm run build

# Headless Chromium for the browser tests: Debian's package (Playwright's own
# browser download is not used).
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
		echo "installing chromium (for the browser tests)"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium fonts-dejavu-core; \
	fi

# Client-library unit tests (vitest), then the browser tests: the real
# `tern serve --demo` (built as `make test` builds it) and headless Chromium.
# Screenshots and server logs go to web/test-artifacts/.
test-web: deps web chromium
	$(CARGO) test --release --workspace --no-run
	cd web && npm test
	cd web && TERN_BIN=$(BIN) timeout 900 npm run e2e
