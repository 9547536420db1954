#!/usr/bin/env bash
# Start a throwaway single-node SLURM cluster on this Debian machine (as root), with two fake GPUs,
# for the SLURM tests. Idempotent: a running cluster is reused. Installs slurm-wlm and munge when
# missing. Records what it started in $SLURM_CI_STATE (default /run/vggflow-slurm) so that
# scripts/slurm/down.sh stops exactly that. Facts behind each step: shared/notes/slurm.md.
set -euo pipefail
state="${SLURM_CI_STATE:-/run/vggflow-slurm}"
host="$(hostname -s)"

if [ "$(id -u)" -ne 0 ]; then
    echo "slurm/up.sh: needs root (it installs packages and starts daemons)" >&2
    exit 1
fi
if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    echo "slurm/up.sh: a cluster is already up ($(sinfo -h -o '%N %T' | head -n 1))"
    exit 0
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    echo "slurm/up.sh: installing slurm-wlm and munge"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi
mkdir -p "$state" /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
for dir in /run/munge /var/log/munge /var/lib/munge; do
    mkdir -p "$dir"
    chown munge:munge "$dir"
done
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    [ -f /etc/munge/munge.key ] || { /usr/sbin/mungekey --create 2>/dev/null || \
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged
    cp /run/munge/munged.pid "$state/munged.pid"
fi

cpus="$(nproc)"
memory=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
cat > /etc/slurm/slurm.conf <<CONF
# Written by vggflow scripts/slurm/up.sh: a single-node test cluster with two fake GPUs.
ClusterName=ci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=300
GresTypes=gpu
NodeName=$host CPUs=$cpus RealMemory=$memory Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
echo "NodeName=$host Name=gpu File=/dev/fakegpu[0-1]" > /etc/slurm/gres.conf
touch /dev/fakegpu0 /dev/fakegpu1

record_pid() {  # the daemons write their pid files shortly after forking
    for _ in $(seq 50); do
        if [ -s "/run/$1.pid" ]; then cp "/run/$1.pid" "$state/$1.pid"; return 0; fi
        sleep 0.2
    done
    echo "slurm/up.sh: $1 wrote no pid file; see /var/log/slurm/$1.log" >&2
    return 1
}
/usr/sbin/slurmctld
record_pid slurmctld
/usr/sbin/slurmd
record_pid slurmd
for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -q '^idle'; then
        echo "slurm/up.sh: cluster up: $(sinfo -h -o '%N %c CPUs %m MB %G %T')"
        exit 0
    fi
    sleep 1
done
echo "slurm/up.sh: the node did not become idle within 60 s; see /var/log/slurm/" >&2
sinfo -N -l >&2 || true
exit 1
