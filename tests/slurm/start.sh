#!/usr/bin/env bash
# Starts a one-node Slurm cluster on this machine for the Slurm integration test (and for trying
# `vapt sweep --slurm` by hand): munged, slurmctld and slurmd from Debian's packages (munge,
# slurmctld, slurmd, slurm-client), a minimal slurm.conf (auth/munge, proctrack/linuxproc,
# task/none, select/cons_tres, the node line from `slurmd -C`), no systemd, no cgroups.
#
#   tests/slurm/start.sh            # prints `export SLURM_CONF=...`; eval it, or source this file
#   tests/slurm/stop.sh             # stops the daemons
#
# State, logs and the config live in $VAPT_SLURM_DIR (default /tmp/vapt-slurm). Needs root (the
# daemons switch to the munge user and run jobs as the submitting user).
set -euo pipefail
dir="${VAPT_SLURM_DIR:-/tmp/vapt-slurm}"
for exe in munged slurmctld slurmd sbatch sinfo; do
  command -v "$exe" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin"
  command -v "$exe" >/dev/null 2>&1 || { echo "start.sh: $exe not found (apt-get install munge slurmctld slurmd slurm-client)" >&2; exit 1; }
done
if [ "$(id -u)" != 0 ]; then
  echo "start.sh: run as root (munged and slurmd need it)" >&2
  exit 1
fi
"$(dirname "$0")/stop.sh" >/dev/null 2>&1 || true
mkdir -p "$dir"/{spool,state,log,run}
host="$(hostname -s)"

# munge: a key (Debian's postinst made one; make one if not), its socket directory, the daemon.
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown munge:munge /etc/munge /etc/munge/munge.key
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
runuser -u munge -- munged

# slurm.conf: this machine as the controller and the one node (its line from `slurmd -C`).
node="$(slurmd -C | head -n 1) State=UNKNOWN"
cat >"$dir/slurm.conf" <<CONF
ClusterName=vapt
SlurmctldHost=$host
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SchedulerParameters=sched_interval=2
MinJobAge=600
$node
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$dir/slurm.conf"
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"

# Wait until the node takes jobs.
for _ in $(seq 1 60); do
  state="$(sinfo -h -n "$host" -o %t 2>/dev/null || true)"
  case "$state" in
    idle*|mix*|alloc*) echo "export SLURM_CONF=$SLURM_CONF"; exit 0 ;;
  esac
  sleep 1
done
echo "start.sh: the node did not come up (state: '${state:-none}'); logs in $dir/log" >&2
tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
exit 1
