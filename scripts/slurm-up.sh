#!/usr/bin/env bash
# A small real Slurm cluster on this machine for the `slurm` allocation
# manager and its tests: munged, slurmctld, and one slurmd per namespace host
# (vse-tslm-h<i> on the bridge vse-tslm-br, 10.213.1.0/26; provider/allocation/netns.ts).
# Idempotent: what runs already is left alone, what is missing is started.
#
#   scripts/slurm-up.sh          install (Debian slurm-wlm + munge) if missing, start, wait until the nodes are idle
#   scripts/slurm-up.sh --down   stop slurmd, slurmctld and munged (only those started here) and remove the namespace hosts
#
# Everything lives in VSE_SLURM_DIR (default /var/lib/vse-slurm): slurm.conf,
# state, spool, logs, pidfiles. Clients find it through SLURM_CONF; when
# /etc/slurm/slurm.conf does not exist it is made a link to ours, so plain
# `sinfo` works too (an existing one is never touched).
#
# Settings for a container without systemd or cgroups: ProctrackType=proctrack/pgid
# (not linuxproc: linuxproc signals a step's whole process tree, so on scancel
# QEMU would get SIGTERM beside its agent and die before the agent powers it
# off; with pgid the signal reaches the agent's process group and QEMU, in its
# own session, is powered off by the agent), TaskPlugin=task/none,
# JobAcctGatherType=jobacct_gather/none, no accounting database (so `sacct`
# has nothing: the manager asks `squeue` and `scontrol show job`, which keeps
# ended jobs for MinJobAge=3600 s).
set -euo pipefail
cd "$(dirname "$0")/.."

DIR="${VSE_SLURM_DIR:-/var/lib/vse-slurm}"
TAG=tslm
SUBNET=10.213.1.0/26
GATEWAY=10.213.1.1
NODES=2
CONF="$DIR/slurm.conf"
export SLURM_CONF="$CONF"
log() { printf '[slurm-up] %s\n' "$*" >&2; }
die() {
  log "$*"
  exit 1
}
node_name() { printf 'vse-%s-h%d' "$TAG" "$1"; }
node_addr() { printf '10.213.1.%d' $(($1 + 2)); }
# A pid from a pidfile, when that process is alive and runs the named program (never a pid alone).
live_pid() {
  local file=$1 prog=$2 pid
  [ -r "$file" ] || return 1
  pid=$(tr -dc '0-9' <"$file")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' '\n' <"/proc/$pid/cmdline" | head -1 | grep -q "/$prog\$\|^$prog\$" || return 1
  printf '%s\n' "$pid"
}
stop_pidfile() {
  local file=$1 prog=$2 pid i
  pid=$(live_pid "$file" "$prog") || return 0
  log "stopping $prog (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}
netns_js() {
  # The project's own namespace-host code (validated, idempotent); needs dist/ (npx tsc).
  [ -f dist/provider/allocation/netns.js ] || die "dist/provider/allocation/netns.js is missing: run npx tsc -p tsconfig.json first"
  node -e "require('./dist/provider/allocation/netns').$1.then(() => undefined, (e) => { console.error(e.message); process.exit(1); })"
}

[ "$(id -u)" -eq 0 ] || die "needs root (munged, slurmctld, slurmd and namespace hosts)"

if [ "${1:-}" = "--down" ]; then
  for i in $(seq 0 $((NODES - 1))); do stop_pidfile "$DIR/run/slurmd-$(node_name "$i").pid" slurmd; done
  stop_pidfile "$DIR/run/slurmctld.pid" slurmctld
  stop_pidfile "$DIR/run/munged.pid" munged
  netns_js "tearDownNetnsHosts('$TAG')"
  [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$CONF" ] && rm -f /etc/slurm/slurm.conf
  log "down (state kept in $DIR; remove it for a fresh cluster)"
  exit 0
fi

# --- packages -------------------------------------------------------------------
need=()
command -v slurmctld >/dev/null || need+=(slurmctld)
command -v slurmd >/dev/null || need+=(slurmd)
command -v sbatch >/dev/null || need+=(slurm-client)
command -v munged >/dev/null || need+=(munge)
if [ "${#need[@]}" -gt 0 ]; then
  log "installing Debian packages: slurm-wlm munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

# --- munge ----------------------------------------------------------------------
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge "$DIR/run"
if [ ! -s /etc/munge/munge.key ]; then
  log "making a munge key"
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
chmod 0755 /run/munge
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged --force
  for i in $(seq 50); do
    munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break
    sleep 0.1
  done
  munge -n </dev/null | unmunge >/dev/null || die "munged does not answer"
  pgrep -u munge -x munged | head -1 >"$DIR/run/munged.pid" || true
fi

# --- namespace hosts --------------------------------------------------------------
netns_js "setUpNetnsHosts({ tag: '$TAG', count: $NODES, subnet: '$SUBNET' })"

# --- slurm.conf -------------------------------------------------------------------
mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
ctld_host=$(hostname -s)
cpus=$(nproc)
tmp=$(mktemp "$DIR/.slurm.conf.XXXXXX")
{
  echo "# Written by scripts/slurm-up.sh: a test cluster of namespace hosts on this machine."
  echo "ClusterName=vse"
  echo "SlurmctldHost=$ctld_host($GATEWAY)"
  echo "SlurmUser=root"
  echo "SlurmdUser=root"
  echo "AuthType=auth/munge"
  echo "StateSaveLocation=$DIR/state"
  echo "SlurmdSpoolDir=$DIR/spool/%n"
  echo "SlurmctldPidFile=$DIR/run/slurmctld.pid"
  echo "SlurmdPidFile=$DIR/run/slurmd-%n.pid"
  echo "SlurmctldLogFile=$DIR/log/slurmctld.log"
  echo "SlurmdLogFile=$DIR/log/slurmd-%n.log"
  echo "ProctrackType=proctrack/pgid"
  echo "TaskPlugin=task/none"
  echo "JobAcctGatherType=jobacct_gather/none"
  echo "AccountingStorageType=accounting_storage/none"
  echo "JobCompType=jobcomp/none"
  echo "MpiDefault=none"
  echo "SwitchType=switch/none"
  echo "SelectType=select/cons_tres"
  echo "SelectTypeParameters=CR_Core_Memory"
  echo "DefMemPerCPU=256"
  echo "ReturnToService=2"
  echo "SlurmdTimeout=30"
  echo "SlurmctldTimeout=30"
  echo "InactiveLimit=0"
  echo "KillWait=30"
  echo "MinJobAge=3600"
  echo "SchedulerType=sched/backfill"
  for i in $(seq 0 $((NODES - 1))); do
    echo "NodeName=$(node_name "$i") NodeAddr=$(node_addr "$i") CPUs=$cpus RealMemory=4096 State=UNKNOWN"
  done
  echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=120 State=UP"
} >"$tmp"
if cmp -s "$tmp" "$CONF"; then
  rm -f "$tmp"
  conf_changed=0
else
  mv -f "$tmp" "$CONF"
  chmod 0644 "$CONF"
  conf_changed=1
fi
[ -e /etc/slurm/slurm.conf ] || { mkdir -p /etc/slurm && ln -s "$CONF" /etc/slurm/slurm.conf; }

# --- daemons ----------------------------------------------------------------------
if [ "$conf_changed" = 1 ]; then
  # A changed configuration (node list, addresses) is read at start: begin afresh.
  for i in $(seq 0 $((NODES - 1))); do stop_pidfile "$DIR/run/slurmd-$(node_name "$i").pid" slurmd; done
  stop_pidfile "$DIR/run/slurmctld.pid" slurmctld
fi
if ! live_pid "$DIR/run/slurmctld.pid" slurmctld >/dev/null; then
  log "starting slurmctld"
  /usr/sbin/slurmctld
fi
for i in $(seq 0 20); do
  scontrol ping 2>/dev/null | grep -q 'is UP' && break
  sleep 0.5
done
scontrol ping | grep -q 'is UP' || die "slurmctld does not answer (log: $DIR/log/slurmctld.log)"
for i in $(seq 0 $((NODES - 1))); do
  n=$(node_name "$i")
  mkdir -p "$DIR/spool/$n"
  if ! live_pid "$DIR/run/slurmd-$n.pid" slurmd >/dev/null; then
    log "starting slurmd $n in namespace host $n ($(node_addr "$i"))"
    # nsenter --net rather than `ip netns exec`: the latter remounts /sys for the namespace,
    # hiding /sys/fs/cgroup, and slurmd 22.05 will not start without its cgroup plugin.
    nsenter --net="/run/netns/$n" /usr/sbin/slurmd -N "$n"
  fi
done

# --- wait until every node is idle (or already running jobs) -------------------------
for i in $(seq 0 120); do
  states=$(sinfo -h -N -o '%N %t' 2>/dev/null | sort -u)
  bad=$(printf '%s\n' "$states" | awk '$2 !~ /^(idle|mix|alloc)$/' || true)
  if [ -n "$states" ] && [ -z "$bad" ]; then
    log "up: $(printf '%s' "$states" | tr '\n' ' ')(SLURM_CONF=$CONF)"
    exit 0
  fi
  # A node left down or drained by an earlier run is put back.
  for n in $(printf '%s\n' "$bad" | awk '$2 ~ /^(down|drain|drng|fail)/ {print $1}'); do
    scontrol update NodeName="$n" State=RESUME 2>/dev/null || true
  done
  sleep 0.5
done
die "nodes not idle after 60 s: $(sinfo -N 2>&1 | tr '\n' ' ') (logs: $DIR/log/)"
