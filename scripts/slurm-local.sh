#!/usr/bin/env bash
# A single-node Slurm on this machine, from Debian's slurmctld, slurmd and
# munge, started by hand (no systemd): what CI runs the teach-array test on.
#
#   scripts/slurm-local.sh install   apt-get the packages (as root)
#   scripts/slurm-local.sh start     munged, slurmctld, slurmd; waits until the node is idle
#   scripts/slurm-local.sh stop
set -euo pipefail
state=${SLURM_LOCAL_DIR:-/tmp/stepwise-slurm}
host=$(hostname -s)
cpus=$(nproc)
case "${1:-}" in
install)
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd slurm-client munge >/dev/null
  ;;
start)
  mkdir -p "$state"/{ctld,d,log} /etc/slurm /run/munge /var/log/munge /var/lib/munge /etc/munge
  if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
  pgrep -x munged >/dev/null || runuser -u munge -- munged --force
  cat >/etc/slurm/slurm.conf <<CONF
ClusterName=stepwise
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/d
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
ReturnToService=2
MaxArraySize=10001
MinJobAge=600
NodeName=$host CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
  pgrep -x slurmctld >/dev/null || slurmctld
  pgrep -x slurmd >/dev/null || slurmd
  for _ in $(seq 1 60); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      sinfo
      exit 0
    fi
    sleep 1
  done
  echo "slurm did not come up; logs in $state/log" >&2
  tail -20 "$state"/log/*.log >&2 || true
  exit 1
  ;;
stop)
  pkill -x slurmd || true
  pkill -x slurmctld || true
  pkill -x munged || true
  ;;
*)
  echo "usage: $0 install|start|stop" >&2
  exit 2
  ;;
esac
