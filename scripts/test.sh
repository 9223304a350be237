#!/usr/bin/env bash
# The project's test command: installs the database server binaries if
# they are missing, then runs every package's tests with the race
# detector. Each test package starts its own throwaway servers.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
# Go lives outside PATH in some non-login shells.
# Prefer the Go that install-deps.sh installs (an older Debian Go may be
# first in PATH).
if [[ -x /usr/local/go/bin/go ]]; then
	export PATH="/usr/local/go/bin:$PATH"
fi
# threepc_seeded builds the tests that plant protocol bugs (internal/seeded).
exec go test -race -count=1 -p 1 -timeout 20m -tags threepc_seeded "$@" ./...
