#!/usr/bin/env bash
# Installs what the tests need on a Debian machine: the PostgreSQL and
# MariaDB server binaries (the tests start their own throwaway servers, so
# the system services are not started), procps and iproute2 (the partition
# tests make network namespaces with ip). Idempotent: when
# everything is there it does nothing and touches no network.
set -euo pipefail

missing=()

have_postgres() {
	local d
	for d in /usr/lib/postgresql/*/bin; do
		[[ -x "$d/initdb" && -x "$d/postgres" ]] && return 0
	done
	command -v initdb >/dev/null 2>&1 && command -v postgres >/dev/null 2>&1
}

have_program() {
	command -v "$1" >/dev/null 2>&1 || [[ -x "/usr/sbin/$1" ]]
}

# A server named by THREEPC_TEST_POSTGRES or THREEPC_TEST_MYSQL stands in
# for that kind's throwaway servers: its binaries are not installed (Debian's
# mariadb-server would replace an installed MySQL 8 server).
if [[ -z ${THREEPC_TEST_POSTGRES:-} ]]; then
	have_postgres || missing+=(postgresql)
fi
if [[ -z ${THREEPC_TEST_MYSQL:-} ]]; then
	{ have_program mariadbd && have_program mariadb-install-db; } || missing+=(mariadb-server)
fi
have_program ps || missing+=(procps)
have_program ip || missing+=(iproute2)
have_program git || missing+=(git)
[[ -e /etc/ssl/certs/ca-certificates.crt ]] || missing+=(ca-certificates)

# Go 1.26 (go.mod's version). Debian 12 ships Go 1.19, which cannot switch
# toolchains by itself; it can still fetch the Go 1.26 toolchain from the
# Go module proxy as a module, which install_go then installs as
# /usr/local/go.
go_version=1.26.8
go_ok() {
	local g=/usr/local/go/bin/go
	[[ -x $g ]] || g=$(command -v go 2>/dev/null) || return 1
	"$g" version 2>/dev/null | grep -Eq 'go1\.(2[6-9]|[3-9][0-9])'
}
if ! go_ok && ! command -v go >/dev/null 2>&1; then
	missing+=(golang-go)
fi

install_go() {
	go_ok && return 0
	local tmp mod dir
	tmp=$(mktemp -d)
	mod="golang.org/toolchain@v0.0.1-go${go_version}.linux-$(dpkg --print-architecture)"
	echo "install-deps: fetching Go ${go_version} ($mod) from the Go module proxy" >&2
	dir=$(cd "$tmp" && GOTOOLCHAIN=local GOFLAGS=-modcacherw GOPATH="$tmp/gopath" GOMODCACHE="$tmp/mod" GOCACHE="$tmp/cache" \
		go mod download -json "$mod" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	[[ -n $dir && -d $dir/bin ]] || { echo "install-deps: could not fetch $mod" >&2; return 1; }
	chmod -R u+w "$dir"
	chmod +x "$dir"/bin/* "$dir"/pkg/tool/*/*
	"${sudo[@]}" rm -rf /usr/local/go
	"${sudo[@]}" cp -a "$dir" /usr/local/go
	chmod -R u+w "$tmp" && rm -rf "$tmp"
	/usr/local/go/bin/go version >&2
}

sudo=()
if ((${#missing[@]} == 0)); then
	install_go
	exit 0
fi

echo "install-deps: installing ${missing[*]}" >&2
if [[ $(id -u) != 0 ]]; then
	if command -v sudo >/dev/null 2>&1; then
		sudo=(sudo)
	else
		echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2
		exit 1
	fi
fi

# Keep the packages' maintainer scripts from starting the system services:
# the tests never use them, and they would take ports 5432 and 3306.
policy=/usr/sbin/policy-rc.d
made_policy=
if [[ ! -e $policy ]]; then
	printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
	"${sudo[@]}" chmod 755 "$policy"
	made_policy=1
fi
cleanup() { [[ -n $made_policy ]] && "${sudo[@]}" rm -f "$policy"; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
install_go
echo "install-deps: done" >&2
