#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the tests that submit real job arrays.
#   .ci/slurm.sh start   install (Debian slurm-wlm + munge) if missing, configure, start, wait until idle
#   .ci/slurm.sh stop    stop the daemons this script started
# Needs root. The node line comes from `slurmd -C`, so the config fits whatever machine runs it.
set -euo pipefail
CONF=/etc/slurm/slurm.conf

install() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
}

configure() {
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
  local node
  node=$(slurmd -C | head -1 | sed 's/NodeName=[^ ]*/NodeName=localhost/; s/ UpTime=.*//')
  cat > "$CONF" <<CONF
# written by fmb's .ci/slurm.sh: a single-node cluster for tests
ClusterName=fmbtest
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/pgid
TaskPlugin=task/none
ReturnToService=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MaxArraySize=1001
SchedulerParameters=defer_batch=0
SchedulerType=sched/backfill
KillWait=5
$node
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
  [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
}

start() {
  install
  configure
  pgrep -x munged >/dev/null || runuser -u munge -- munged --force
  pgrep -x slurmctld >/dev/null || slurmctld
  pgrep -x slurmd >/dev/null || slurmd -N localhost
  for _ in $(seq 60); do
    if sinfo -h -o %t 2>/dev/null | grep -qx idle; then echo "slurm: node idle"; return; fi
    scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  echo "slurm did not come up; see /var/log/slurm/" >&2
  exit 1
}

stop() {
  pkill -x slurmd || true
  pkill -x slurmctld || true
  pkill -x munged || true
}

"${1:-start}"
