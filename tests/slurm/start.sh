#!/usr/bin/env bash
# A real single-node SLURM cluster on this host, for the workflow tests.
#
# Installs Debian's slurm-wlm and munge when absent, writes a slurm.conf for this
# host (its CPUs and memory, no accounting), and starts munged, slurmctld and slurmd
# by hand (no systemd), recording their PIDs under $SLURM_TEST_DIR for stop.sh.
# The config goes to /etc/slurm/slurm.conf, where job steps (srun inside sbatch) look
# for it; an existing config that start.sh did not write is left alone and used.
# Prints the path of slurm.conf.
set -euo pipefail

DIR=${SLURM_TEST_DIR:-/tmp/moetopo-slurm}
mkdir -p "$DIR"/{spool,state,log,munge,run}

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >"$DIR/log/apt.log" 2>&1
  apt-get install -y -q slurm-wlm munge >>"$DIR/log/apt.log" 2>&1
fi

HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
USER_NAME=$(id -un)

# munge: a key of our own, a socket in our directory
KEY="$DIR/munge/munge.key"
[ -f "$KEY" ] || dd if=/dev/urandom of="$KEY" bs=1 count=1024 status=none
chmod 600 "$KEY"
SOCKET="$DIR/munge/munge.socket"
PIDFILE="$DIR/run/munged.pid"
if ! { [ -S "$SOCKET" ] && [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }; then
  rm -f "$SOCKET"*  # left by a munged that is gone (a rebooted machine)
  munged --key-file="$KEY" --socket="$SOCKET" --pid-file="$PIDFILE" \
    --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munge.seed" --force
fi

CONF=/etc/slurm/slurm.conf
MARK="# written by moetopo tests/slurm/start.sh"
if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
  echo "$CONF exists and is not ours: using the cluster it describes" >&2
else
mkdir -p /etc/slurm
cat >"$CONF" <<CONF
$MARK
ClusterName=moetopo
SlurmctldHost=$HOST
SlurmUser=$USER_NAME
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$SOCKET
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmdSpoolDir=$DIR/spool
StateSaveLocation=$DIR/state
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
Waittime=0
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
fi

export SLURM_CONF="$CONF"
if ! { [ -f "$DIR/run/slurmctld.pid" ] && kill -0 "$(cat "$DIR/run/slurmctld.pid")" 2>/dev/null; }; then
  slurmctld -f "$CONF" -i
fi
if ! { [ -f "$DIR/run/slurmd.pid" ] && kill -0 "$(cat "$DIR/run/slurmd.pid")" 2>/dev/null; }; then
  slurmd -f "$CONF"
fi

# wait until the node accepts work
# (each client call bounded: with broken authentication sinfo retries for minutes)
deadline=$((SECONDS + 90))
while [ "$SECONDS" -lt "$deadline" ]; do
  if timeout 5 sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    echo "$CONF"
    exit 0
  fi
  timeout 5 scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
  sleep 1
done
echo "slurm did not come up within 90 s; the ends of its logs:" >&2
tail -n 5 "$DIR"/log/*.log >&2
exit 1
