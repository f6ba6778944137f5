#!/usr/bin/env bash
# Stops the one-node Slurm cluster that tests/slurm/start.sh started.
dir="${VAPT_SLURM_DIR:-/tmp/vapt-slurm}"
for pidfile in "$dir/run/slurmd.pid" "$dir/run/slurmctld.pid"; do
  [ -s "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
done
pkill -x slurmstepd 2>/dev/null || true
pkill -x munged 2>/dev/null || true
sleep 1
exit 0
