#!/usr/bin/env bash
# Shows the drain sequence at work, with each server's log:
#  1. 1,000 phoenix clients on one node, a keep-alive publisher, SIGTERM
#     mid-stream: every accepted publish delivered in order, 1012 paced;
#  2. a rolling restart of two nodes behind a loopback balancer under
#     continuous publishing.
# Uses the real binary (build/herald) and the integration tests' clients.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x build/herald ] || make build
[ -d tests/node_modules ] || bash scripts/deps.sh
HERALD_TEST_LOG=1 exec node --test --test-reporter=spec \
  tests/integration/40_drain.test.js tests/integration/41_rolling_restart.test.js
