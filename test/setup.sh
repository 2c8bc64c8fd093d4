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
	python3-psycopg
)

# Packages that come with a service of their own, of which only the program
# is used: test/t/005_exporter.pl starts /usr/bin/prometheus-postgres-exporter
# and test/t/006_pgbouncer.pl starts /usr/sbin/pgbouncer itself, each on a
# port of its own.  They are installed with service starts denied
# (policy-rc.d) and their unit disabled, so that no exporter or pooler of
# the package's runs on a developer's machine.
AR_SERVICE_PACKAGES=(
	prometheus-postgres-exporter
	pgbouncer
)

ar_missing_packages() {
	local p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
	done
}

ar_install_packages() {
	local missing=() services=()
	mapfile -t missing < <(ar_missing_packages "${AR_PACKAGES[@]}")
	mapfile -t services < <(ar_missing_packages "${AR_SERVICE_PACKAGES[@]}")
	[ ${#missing[@]} -eq 0 ] && [ ${#services[@]} -eq 0 ] && return 0
	local sudo=""
	[ "$(id -u)" = 0 ] || sudo="sudo"
	echo "installing: ${missing[*]}${missing[*]:+ }${services[*]}"
	$sudo apt-get update -qq
	if [ ${#missing[@]} -gt 0 ]; then
		DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	fi
	[ ${#services[@]} -eq 0 ] && return 0
	# invoke-rc.d and deb-systemd-invoke start nothing while policy-rc.d
	# exits 101; one that is already there is left as it is
	local policy=/usr/sbin/policy-rc.d own_policy="" rc=0 s
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null && $sudo chmod 755 "$policy" && own_policy=1
	fi
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${services[@]}" >/dev/null || rc=$?
	[ -n "$own_policy" ] && $sudo rm -f "$policy"
	if command -v systemctl >/dev/null; then
		for s in "${services[@]}"; do
			$sudo systemctl disable --quiet "$s.service" >/dev/null 2>&1 || true
		done
	fi
	return $rc
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
