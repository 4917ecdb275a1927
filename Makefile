# Thin wrapper: dependencies, build, run, test. CMake does the real work.
BUILD      ?= build
BUILD_ASAN ?= build-asan
BUILD_FUZZ ?= build-fuzz
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
FUZZ_SECONDS ?= 60

.PHONY: all deps build install run test test-asan fuzz bench bench-compare bench-cluster bench-cluster-large bench-history bench-v1 bench-longpoll bench-recovery bench-recovery-cluster clean

all: build

deps:
	@bash scripts/deps.sh

$(BUILD)/Makefile: CMakeLists.txt
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo

build: deps $(BUILD)/Makefile
	cmake -S . -B $(BUILD) >/dev/null
	$(MAKE) -C $(BUILD) -j$(JOBS) --no-print-directory

# Install under PREFIX (DESTDIR prepended, for packaging): bin/herald,
# share/herald/{lua,plugins,examples}, share/doc/herald, the config
# etc/herald/herald.lua (kept if present; /etc for PREFIX=/usr) and the
# systemd unit lib/systemd/system/herald.service (README "Installing").
PREFIX  ?= /usr/local
DESTDIR ?=
install: build
	DESTDIR="$(DESTDIR)" cmake --install $(BUILD) --prefix "$(PREFIX)"

# Start herald on its embedded default config (port 4000, or $HERALD_PORT).
run: build
	@echo "herald: demo page http://localhost:$${HERALD_PORT:-4000}/ (status page at /admin)"
	@echo "herald: WebSocket ws://localhost:$${HERALD_PORT:-4000}/socket/websocket (Phoenix) and /push_socket/websocket (PushEx)"
	@echo "herald: publish with curl -X POST localhost:$${HERALD_PORT:-4000}/api/push -H 'content-type: application/json' -d '{\"channel\":\"room:1\",\"event\":\"hello\",\"data\":{}}'"
	exec ./$(BUILD)/herald

test: build
	cd $(BUILD) && ctest --output-on-failure -j2

# The unit, Lua, fuzz-regression and integration tests under ASan+UBSan.
test-asan: deps
	cmake -S . -B $(BUILD_ASAN) -DCMAKE_BUILD_TYPE=Debug -DHERALD_ASAN=ON -DHERALD_UBSAN=ON >/dev/null
	$(MAKE) -C $(BUILD_ASAN) -j$(JOBS) --no-print-directory
	cd $(BUILD_ASAN) && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure -j2

# Benchmarks print numbers; they assert nothing (tests/load/README.md).
bench: build
	bash scripts/bench.sh
	@echo "== fanout with a publish hook (tests/load/publish-hook.lua)"
	BENCH_HERALD_SCRIPT=tests/load/publish-hook.lua bash scripts/bench.sh fanout
	@echo "== big topic: 10,000 joins on one tracked topic, then on an untracked one"
	BENCH_ARGS="-n 10000 --topics one" bash scripts/bench.sh idle
	BENCH_HERALD_SCRIPT=tests/load/untracked.lua BENCH_ARGS="-n 10000 --topics one" bash scripts/bench.sh idle
	@echo "== cost per call of each Lua hook"
	./$(BUILD)/tests/load/hook-bench
	bash scripts/bench-webhook.sh

bench-compare: build
	bash scripts/bench-compare.sh

# Connect + join rate with webhook_auth (connect_url and join_url on a local Node backend) against none.
.PHONY: bench-webhook
bench-webhook: build
	bash scripts/bench-webhook.sh

# One node against two joined by Redis (a redis-server of its own): scripts/cluster-bench.sh.
bench-cluster: build
	bash scripts/cluster-bench.sh

# Fan-out on a topic with a history (1,000 messages kept) against one without.
bench-history: build
	BENCH_RUNS=$${BENCH_RUNS:-3} bash scripts/bench.sh fanout fanout-history

# Fan-out with every other subscriber on Phoenix's V1 serializer against all on V2
# (alternating, 3 runs each unless BENCH_RUNS says otherwise).
bench-v1: build
	BENCH_RUNS=$${BENCH_RUNS:-3} bash scripts/bench.sh fanout fanout-v1half

# Fan-out to LongPoll sessions (each holding a poll) against the same fan-out to
# WebSockets (alternating, 3 runs each unless BENCH_RUNS says otherwise); then
# what a poll forwarded to the session's node through Redis adds (two nodes).
bench-longpoll: build
	BENCH_RUNS=$${BENCH_RUNS:-3} bash scripts/bench.sh fanout fanout-longpoll
	HERALD_BIN=$(BUILD)/herald node tests/load/lp-forward-bench.js 1000

# A recovery storm: 10,000 clients of a topic with history drop at once, 10
# messages are published, all rejoin at once with since (BENCH_RUNS applies).
bench-recovery: build
	bash scripts/bench.sh recovery-storm

# The same storm on two nodes joined by Redis (history in Redis), each client
# rejoining on the other node: Redis commands per storm against the history
# reads, storm time, herald's CPU per node (scripts/cluster-bench.sh).
bench-recovery-cluster: build
	BENCH_CLUSTER_VARIANTS=$${BENCH_CLUSTER_VARIANTS:-recovery-storm} bash scripts/cluster-bench.sh

# 100,000 joined clients over 6 herald processes sharing one port, one topic,
# 5 publishes (scripts/cluster-large.sh; CLUSTER_LARGE_CLIENTS=N for another count).
bench-cluster-large: build
	bash scripts/cluster-large.sh

# The convention example's crowd: 3,000 participants voting, debounced tallies against every vote sent (examples/convention/README.md).
.PHONY: bench-convention
bench-convention: build
	examples/convention/crowd

# libFuzzer (clang) on every parser, FUZZ_SECONDS each.
fuzz: deps
	CC=clang cmake -S . -B $(BUILD_FUZZ) -DHERALD_FUZZ=ON -DHERALD_ASAN=ON -DHERALD_UBSAN=ON >/dev/null
	$(MAKE) -C $(BUILD_FUZZ) -j$(JOBS) --no-print-directory
	@for f in $(BUILD_FUZZ)/tests/fuzz/fuzz_*; do \
	  [ -x "$$f" ] || continue; t=$$(basename $$f); echo "== $$t"; \
	  mkdir -p $(BUILD_FUZZ)/corpus/$$t; \
	  $$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 $(BUILD_FUZZ)/corpus/$$t tests/fuzz/corpus/$$t || exit 1; \
	done

clean:
	rm -rf $(BUILD) $(BUILD_ASAN) $(BUILD_FUZZ)
