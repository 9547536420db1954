#!/usr/bin/env bash
# Stop what scripts/slurm/up.sh started (by the PIDs it recorded: slurmd, slurmctld, then munged),
# and nothing else. Safe to run when nothing was started.
set -uo pipefail
state="${SLURM_CI_STATE:-/run/vggflow-slurm}"
for daemon in slurmd slurmctld munged; do
    pidfile="$state/$daemon.pid"
    [ -f "$pidfile" ] || continue
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        echo "slurm/down.sh: stopped $daemon ($pid)"
    fi
    rm -f "$pidfile"
done
