#!/usr/bin/env bash
# Make a fresh Debian 12 machine ready to build and test agentretry:
# installs the Debian packages it needs (when missing), then builds and
# installs the extension.  Sourced by test/run.sh and examples/demo.sh.
set -euo pipefail

AR_PACKAGES=(
	build-essential
	postgresql-15
	postgresql-server-dev-15
	postgresql-15-cron
	postgresql-15-pgtap
	pgtap
	libipc-run-perl
	libtap-parser-sourcehandler-pgtap-perl
)

ar_install_packages() {
	local missing=()
	local p
	for p in "${AR_PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	local sudo=""
	[ "$(id -u)" = 0 ] || sudo="sudo"
	echo "installing: ${missing[*]}"
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ar_build_install() {
	local sudo=""
	[ "$(id -u)" = 0 ] || sudo="sudo"
	make -s PG_CONFIG="$(command -v pg_config)" >/dev/null
	$sudo make -s install >/dev/null
}

ar_install_packages
# Debian's pg_config wrapper picks the newest server-dev; pin 15
export PATH="/usr/lib/postgresql/15/bin:$PATH"
ar_build_install
