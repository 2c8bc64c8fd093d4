#!/usr/bin/env bash
# The agentretry demo: a throwaway local cluster, the extension installed,
# and an agent workload with injected faults run twice, once with a naive
# retry loop and once with agentretry (see examples/README.md); then the
# self-test of the retry worker example (examples/retry_worker.py).
#
#   bash examples/demo.sh [--tasks N] [--workers N] [--retry-workers N] [--seed N]
#
#   AR_BASE    where the cluster lives (default /tmp/agentretry-demo)
#   AR_PGPORT  its port                (default 54335)
#
# Exits non-zero when agentretry sent a duplicate email or lost a task, or
# when the retry worker's self-test found a violation.
set -euo pipefail
cd "$(dirname "$0")/.."

export AR_BASE=${AR_BASE:-/tmp/agentretry-demo}
export AR_PGPORT=${AR_PGPORT:-54335}

# Debian packages, then build and install the extension.
source test/setup.sh

# The workload is Python with psycopg2, from Debian: /usr/bin/python3, not
# whichever python comes first on PATH.
PYTHON=/usr/bin/python3
if ! { [ -x "$PYTHON" ] && "$PYTHON" -c "import psycopg2" 2>/dev/null; }; then
	sudo=""
	[ "$(id -u)" = 0 ] || sudo="sudo"
	echo "installing: python3-psycopg2"
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
		python3-psycopg2 >/dev/null
fi

source test/cluster.sh
echo "starting a private cluster in $AR_BASE on port $AR_PGPORT"
cluster_start || { echo "could not start the demo cluster"; exit 1; }
trap cluster_stop EXIT

psql -X -q -v ON_ERROR_STOP=1 -d postgres -f examples/demo_setup.sql >/dev/null

status=0
"$PYTHON" examples/agent_demo.py "$@" || status=$?

# The retry worker's self-test uses the demo's seed too.
seed_args=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
	case ${args[i]} in
		--seed) seed_args=(--seed "${args[i + 1]:-}") ;;
		--seed=*) seed_args=("${args[i]}") ;;
	esac
done

# Its workers log in as demo_agent (agentretry_agent, as in production);
# registering its tool and reading agentretry.events need agentretry_admin
# and agentretry_operator, which the superuser has.
echo
echo "examples/retry_worker.py --self-test"
PGUSER=demo_agent "$PYTHON" examples/retry_worker.py --dbname agentdemo \
	--self-test --setup-user postgres "${seed_args[@]}" || status=$?
exit "$status"
