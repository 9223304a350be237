#!/usr/bin/env bash
# Runs the demo: a transfer across a PostgreSQL and a MariaDB database,
# on throwaway servers.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
# Go lives outside PATH in some non-login shells.
# Prefer the Go that install-deps.sh installs (an older Debian Go may be
# first in PATH).
if [[ -x /usr/local/go/bin/go ]]; then
	export PATH="/usr/local/go/bin:$PATH"
fi
exec go run ./cmd/threepc demo "$@"
