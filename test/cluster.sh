#!/usr/bin/env bash
# Start or stop a private, throwaway PostgreSQL cluster for agentretry's
# tests, benchmarks and demo.  Source it, then call cluster_start / cluster_stop.
#
#   AR_PGDATA  data directory   (default /tmp/agentretry-cluster/data)
#   AR_PGPORT  port             (default 54329)
#
# The server runs as the invoking user, or as "postgres" when invoked as
# root (initdb refuses root).  pg_cron is preloaded when it is installed;
# it runs its jobs in background workers, as the cluster listens on no TCP
# address for it to connect to.

AR_BASE=${AR_BASE:-/tmp/agentretry-cluster}
AR_PGDATA=${AR_PGDATA:-$AR_BASE/data}
AR_PGPORT=${AR_PGPORT:-54329}
AR_PGBIN=${AR_PGBIN:-$(pg_config --bindir)}

export PGHOST=${PGHOST_OVERRIDE:-/tmp}
export PGPORT=$AR_PGPORT

_as_server_user() {
	if [ "$(id -u)" = 0 ]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

cluster_start() {
	local extra_conf=${1:-}
	cluster_stop >/dev/null 2>&1 || true
	rm -rf "$AR_BASE"
	mkdir -p "$AR_BASE"
	[ "$(id -u)" = 0 ] && chown postgres: "$AR_BASE"
	_as_server_user "$AR_PGBIN/initdb" -D "$AR_PGDATA" -U postgres -A trust \
		--no-sync >"$AR_BASE/initdb.log" 2>&1 || { cat "$AR_BASE/initdb.log"; return 1; }
	{
		echo "port = $AR_PGPORT"
		echo "unix_socket_directories = '/tmp'"
		echo "listen_addresses = ''"
		echo "fsync = on"
		echo "max_connections = 100"
		echo "shared_buffers = 512MB"
		echo "max_prepared_transactions = 10"
		if [ -f "$(pg_config --pkglibdir)/pg_cron.so" ]; then
			echo "shared_preload_libraries = 'pg_cron'"
			echo "cron.database_name = 'postgres'"
			echo "cron.use_background_workers = on"
		fi
		[ -n "$extra_conf" ] && printf '%s\n' "$extra_conf"
	} >>"$AR_PGDATA/postgresql.conf"
	_as_server_user "$AR_PGBIN/pg_ctl" -D "$AR_PGDATA" -l "$AR_BASE/server.log" \
		-w -t 60 start >/dev/null || { cat "$AR_BASE/server.log"; return 1; }
	export PGUSER=postgres
}

cluster_stop() {
	[ -d "$AR_PGDATA" ] || return 0
	_as_server_user "$AR_PGBIN/pg_ctl" -D "$AR_PGDATA" -m fast -w stop >/dev/null 2>&1 || true
}
