#!/usr/bin/env bash
# A real single-node Slurm for the tests: start | stop | status.
#
#   tests/slurm/local_cluster.sh start     # installs Debian's slurm + munge when missing (root), starts them
#   export SLURM_CONF=/tmp/video_st_slurm/slurm.conf
#   sbatch --wait ...
#   tests/slurm/local_cluster.sh stop      # stops exactly the daemons this script started (pid files)
#
# Everything lives under SLURM_TEST_DIR (default /tmp/video_st_slurm): config, state, spool, logs, pid files,
# a private munge key and socket, and two fake GPU devices (character devices, so --gres=gpu:N can be scheduled;
# jobs then run on the CPU). Exit codes: 0 ready / stopped, 3 cannot run here (not root, no apt), 1 failed.
set -euo pipefail

DIR="${SLURM_TEST_DIR:-/tmp/video_st_slurm}"
CONF="$DIR/slurm.conf"
HOST="$(hostname -s)"
log() { echo "local_cluster: $*" >&2; }

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
    && command -v munged >/dev/null && return 0
  [[ $(id -u) -eq 0 ]] || { log "Slurm is not installed and installing it needs root"; exit 3; }
  command -v apt-get >/dev/null || { log "Slurm is not installed and there is no apt-get"; exit 3; }
  log "installing slurmctld slurmd slurm-client munge (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >"$DIR/apt.log" 2>&1; then
    apt-get update -q >>"$DIR/apt.log" 2>&1 || true
    apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >>"$DIR/apt.log" 2>&1 \
      || { log "apt-get failed (see $DIR/apt.log)"; exit 3; }
  fi
}

write_config() {
  local cpus mem_mb
  cpus="$(nproc)"
  mem_mb="$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.95}' /proc/meminfo)"
  mkdir -p "$DIR"/{state,spool,log,run,dev}
  for i in 0 1; do [[ -e "$DIR/dev/nvidia$i" ]] || mknod "$DIR/dev/nvidia$i" c 1 3; done
  cat >"$DIR/gres.conf" <<GRES
AutoDetect=off
Name=gpu File=$DIR/dev/nvidia[0-1]
GRES
  cat >"$CONF" <<SLURM
ClusterName=videost
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_DIR/munge.socket
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem_mb / cpus))
GresTypes=gpu
ReturnToService=2
JobRequeue=1
MailProg=/bin/true
SlurmctldPort=6917
SlurmdPort=6918
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SchedulerType=sched/backfill
SchedulerParameters=defer_batch=0
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
SLURM
}

start_munge() {
  # munged runs as the munge user, who may not traverse DIR's parents (pytest's tmp folders are 0700): its
  # key, socket, log and pid file live in their own folder, owned by munge.
  dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1024 count=1 status=none
  chmod 400 "$MUNGE_DIR/munge.key"
  local user=()
  if id munge >/dev/null 2>&1; then
    chown -R munge:munge "$MUNGE_DIR"
    user=(runuser -u munge --)
  fi
  "${user[@]}" munged --key-file="$MUNGE_DIR/munge.key" --socket="$MUNGE_DIR/munge.socket" \
    --pid-file="$MUNGE_DIR/munged.pid" --log-file="$MUNGE_DIR/munged.log" --seed-file="$MUNGE_DIR/munge.seed" --force
  cp "$MUNGE_DIR/munged.pid" "$DIR/run/munged.pid"
}

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  mkdir -p "$DIR"
  install_packages
  if alive "$DIR/run/slurmctld.pid"; then log "already running ($CONF)"; return 0; fi
  MUNGE_DIR="$(mktemp -d /tmp/video_st_munge.XXXXXX)"
  chmod 755 "$MUNGE_DIR"
  echo "$MUNGE_DIR" >"$DIR/munge_dir"
  write_config
  start_munge
  slurmctld -f "$CONF"
  slurmd -f "$CONF"
  export SLURM_CONF="$CONF"
  for _ in $(seq 1 60); do
    state="$(sinfo -h -o %T 2>/dev/null || true)"
    [[ "$state" == "idle" ]] && { log "node $HOST idle; export SLURM_CONF=$CONF"; return 0; }
    sleep 0.5
  done
  log "the node did not become idle in 30 s (state: ${state:-none}); see $DIR/log"
  stop
  exit 1
}

stop() {
  for daemon in slurmd slurmctld munged; do
    pidfile="$DIR/run/$daemon.pid"
    if alive "$pidfile"; then
      pid="$(cat "$pidfile")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
  if [[ -f "$DIR/munge_dir" ]]; then
    rm -rf "$(cat "$DIR/munge_dir")"
    rm -f "$DIR/munge_dir"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) alive "$DIR/run/slurmctld.pid" && SLURM_CONF="$CONF" sinfo ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
