#!/usr/bin/env bash
# Stop the single-node cluster that start.sh started, by the PIDs it recorded.
set -u
DIR=${SLURM_TEST_DIR:-/tmp/moetopo-slurm}
for daemon in slurmd slurmctld munged; do
  pidfile="$DIR/run/$daemon.pid"
  if [ -f "$pidfile" ]; then
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null
    rm -f "$pidfile"
  fi
done
rm -f "$DIR/munge/munge.socket"*
if grep -qF "# written by moetopo tests/slurm/start.sh" /etc/slurm/slurm.conf 2>/dev/null; then
  rm -f /etc/slurm/slurm.conf
fi
