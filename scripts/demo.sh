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
# go run would say nothing while it compiles, which on a fresh machine
# (modules to download, nothing in the build cache) takes a minute or two.
echo "demo.sh: building threepc into bin/ (on a fresh machine the first build downloads and compiles the modules: a minute or two) ..." >&2
t0=$SECONDS
go build -o bin/threepc ./cmd/threepc
echo "demo.sh: built in $((SECONDS - t0)) s" >&2
exec bin/threepc demo "$@"
