#!/usr/bin/env bash
# A real one-node Slurm on this machine (Debian's slurm-wlm and munge), for development and CI.
#
#   slurm/local-cluster.sh start    # install if missing, write slurm.conf, start munged/slurmctld/slurmd, wait for idle
#   slurm/local-cluster.sh status   # daemons, node state and queue; exit 0 when the node takes jobs
#   slurm/local-cluster.sh stop     # stop slurmctld, slurmd and munged
#
# Needs root (apt-get, daemons). Idempotent: `start` on a running cluster only checks it. The node line
# comes from `slurmd -C`; requeue is made fast (a requeued job is eligible again in about 15 s instead
# of about 2.5 min). Exit status: 0 ready, 1 failed to start, 2 Slurm cannot be installed here.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by megatron_tibetan slurm/local-cluster.sh"
STATE_DIRS=(/var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm)
MUNGE_PID=/run/munge/munged.pid

say() { echo "[local-cluster] $*"; }
die() { say "error: $*" >&2; exit "${2:-1}"; }

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return 0
    [ "$(id -u)" = 0 ] || die "Slurm is not installed and installing it needs root (apt-get install slurm-wlm munge)" 2
    command -v apt-get >/dev/null || die "Slurm is not installed and there is no apt-get to install it (Debian/Ubuntu only)" 2
    say "installing slurm-wlm and munge with apt-get (about 20 s)"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq slurm-wlm munge; } >/tmp/local-cluster-apt.log 2>&1; then
        tail -5 /tmp/local-cluster-apt.log >&2
        die "apt-get could not install slurm-wlm munge (log: /tmp/local-cluster-apt.log)" 2
    fi
}

write_conf() {
    local node host memory gres_line="" gres_types="" gpus
    host=$(hostname -s)
    # slurmd -C: "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105"
    node=$(slurmd -C | head -1)
    memory=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
    # a little under what the node reports, else slurmd registers with less than configured and is drained
    node=$(sed "s/RealMemory=[0-9]*/RealMemory=$((memory * 95 / 100))/" <<<"$node")
    gpus=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU ' || true)
    if [ "${gpus:-0}" -gt 0 ]; then  # a GPU workstation: --gpus-per-node works as on a cluster
        gres_types="GresTypes=gpu"
        node="$node Gres=gpu:$gpus"
        printf '%s\nNodeName=%s Name=gpu File=/dev/nvidia[0-%d]\n' "$MARK" "$host" $((gpus - 1)) >/etc/slurm/gres.conf
    fi
    local tmp
    tmp=$(mktemp)
    cat >"$tmp" <<EOF
$MARK
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
# credentials live 10 s (default 120): a requeued job may start again once its old credential expired
AuthInfo=cred_expire=10
SchedulerParameters=bf_interval=1,sched_interval=2
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobRequeue=1
MailProg=/bin/true
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
$gres_types
$node
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    if [ -f "$CONF" ] && cmp -s "$tmp" "$CONF"; then
        rm -f "$tmp"
        return 1  # unchanged
    fi
    if [ -f "$CONF" ] && ! head -1 "$CONF" | grep -qF "$MARK"; then
        rm -f "$tmp"
        die "$CONF exists and was not written by this script: not overwriting a real cluster's configuration"
    fi
    mv "$tmp" "$CONF"
    chmod 644 "$CONF"
    say "wrote $CONF ($node)"
    return 0
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    munge_ok && return 0
    mkdir -p /run/munge
    chown munge:munge /run/munge
    chmod 755 /run/munge
    [ -f /etc/munge/munge.key ] || { mungekey --create >/dev/null && chown munge:munge /etc/munge/munge.key; }
    # munged refuses to run as root ("Logfile is insecure"): run it as the munge user
    su -s /bin/sh munge -c /usr/sbin/munged
    for _ in $(seq 50); do munge_ok && return 0; sleep 0.1; done
    die "munged did not start (see /var/log/munge/munged.log)"
}

ctld_ok() { scontrol ping 2>/dev/null | grep -q "is UP"; }
node_state() { sinfo -h -n "$(hostname -s)" -o %T 2>/dev/null | head -1; }
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null && ! grep -q '^State:.*zombie' "/proc/$(cat "$1")/status" 2>/dev/null; }

start() {
    install_packages
    # slurmctld reaches slurmd, and the ranks reach rank 0, by this name
    getent hosts "$(hostname -s)" >/dev/null || die "hostname $(hostname -s) does not resolve: add it to /etc/hosts"
    mkdir -p "${STATE_DIRS[@]}"
    local changed=0
    write_conf && changed=1
    start_munge
    if ! pid_alive /run/slurm/slurmctld.pid; then
        slurmctld  # detaches by itself
    elif [ $changed = 1 ]; then
        scontrol reconfigure
    fi
    for _ in $(seq 100); do ctld_ok && break; sleep 0.1; done
    ctld_ok || die "slurmctld is not answering (see /var/log/slurm/slurmctld.log)"
    pid_alive /run/slurm/slurmd.pid || slurmd
    local state=""
    for _ in $(seq 300); do
        state=$(node_state)
        case "$state" in
            idle*|mixed*|allocated*|completing*) say "ready: node $(hostname -s) is $state"; return 0 ;;
            down*|drain*) scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null || true ;;
        esac
        sleep 0.1
    done
    die "node $(hostname -s) is '${state:-unknown}' after 30 s (see /var/log/slurm/slurmd.log)"
}

stop() {
    if ctld_ok; then
        scontrol shutdown  # both slurmctld and slurmd
    fi
    for _ in $(seq 100); do
        pid_alive /run/slurm/slurmctld.pid || pid_alive /run/slurm/slurmd.pid || break
        sleep 0.1
    done
    if pid_alive "$MUNGE_PID"; then
        kill "$(cat "$MUNGE_PID")"
    fi
    say "stopped"
}

status() {
    local ok=0
    if munge_ok; then say "munged: running"; else say "munged: not running"; ok=1; fi
    if ctld_ok; then say "slurmctld: up"; else say "slurmctld: not answering"; ok=1; fi
    if pid_alive /run/slurm/slurmd.pid; then say "slurmd: running"; else say "slurmd: not running"; ok=1; fi
    if [ $ok = 0 ]; then
        sinfo
        squeue
        case "$(node_state)" in idle*|mixed*|allocated*|completing*) ;; *) ok=1 ;; esac
    fi
    return $ok
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 64 ;;
esac
