#!/usr/bin/env bash
# Runs the demo: a transfer across a PostgreSQL and a MariaDB database,
# on throwaway servers.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
# Go lives outside PATH in some non-login shells.
if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
	export PATH="/usr/local/go/bin:$PATH"
fi
exec go run ./cmd/threepc demo "$@"
