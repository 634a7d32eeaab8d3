# Shared by slurm/cpt.sh, slurm/sft.sh and slurm/eval.sh (sourced inside the job; not submitted itself).
#
# Launch: `srun`, one task per GPU (or per CPU rank on a node without GPUs). Each task reads its rank,
# local rank and world size from Slurm (SLURM_PROCID, SLURM_LOCALID, SLURM_STEP_NUM_TASKS) and derives
# MASTER_ADDR (the step's first host, `scontrol show hostnames`) and MASTER_PORT (20000 + job id % 20000,
# so jobs sharing a node differ) unless they are exported: megatron_tibetan/distributed.py. Signals and
# exit statuses go straight from Slurm to each rank and back, which is what requeue needs (torchrun's
# agent would stand in between: see README, "Slurm").
#
# Exit statuses of `python -m megatron_tibetan.train`: 0 finished, 3 stopped by a pre-emption or time-limit
# signal after saving (to be resumed), anything else an error. Only 3 requeues the job.

RESUME_STATUS=3

note() { echo "[$STAGE.sh] $*"; }
fail() { note "error: $*" >&2; exit 2; }

# One log per job and restart: LOG_DIR/<job name>-<job id>-restart<N>.log holds everything of this attempt;
# Slurm's own output file (--output) gets one line per attempt pointing at it, plus Slurm's messages.
open_run_log() {
    local restart=${SLURM_RESTART_COUNT:-0}
    mkdir -p "${LOG_DIR:=logs}"
    RUN_LOG="$LOG_DIR/${SLURM_JOB_NAME:-$STAGE}-${SLURM_JOB_ID:-local}-restart$restart.log"
    note "job ${SLURM_JOB_ID:-?} restart $restart: log $RUN_LOG"
    exec >"$RUN_LOG" 2>&1
    # a requeue, pre-emption or time limit sends SIGTERM to this shell too: outlive the ranks' save
    GOT_SIGTERM=0
    trap 'GOT_SIGTERM=1; note "SIGTERM (scancel, requeue, pre-emption or time limit)"' TERM
    note "job ${SLURM_JOB_ID:-?} (${SLURM_JOB_NAME:-$STAGE}) restart $restart on $(hostname) at $(date -Is)"
    note "nodes ${SLURM_JOB_NODELIST:-$(hostname)} (${SLURM_NNODES:-1}), tasks ${SLURM_NTASKS:-1}, CPUs per task ${SLURM_CPUS_PER_TASK:-1}, GPUs on node ${SLURM_GPUS_ON_NODE:-0}"
}

setup_environment() {
    [ -d "$ROOT/megatron_tibetan" ] || fail "$ROOT is not the megatron_tibetan repository: submit from its root or set MEGATRON_TIBETAN_ROOT"
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    PYTHON=${PYTHON:-python}
    command -v "$PYTHON" >/dev/null || fail "$PYTHON not found: activate the environment before sbatch (sbatch passes it on) or set PYTHON"
    # with task/none or a shared node every rank would see all cores: one OpenMP pool per task's CPUs
    export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-${OMP_NUM_THREADS:-1}}
    if [ "${SLURM_GPUS_ON_NODE:-0}" -gt 0 ] 2>/dev/null || [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
        DEVICE=cuda
    else
        DEVICE=cpu  # a node without GPUs: the same launch, gloo on the CPU
    fi
    note "device $DEVICE; OMP_NUM_THREADS=$OMP_NUM_THREADS; python $(command -v "$PYTHON")"
}

# Run a job step in the background and wait for it, so the batch shell survives the SIGTERM of a
# requeue or pre-emption (the ranks are saving then) and can forward a USR1/USR2 sent to it
# (`#SBATCH --signal=B:USR1@N`, `scancel --batch --signal=USR1`) to the ranks. Sets STEP_STATUS.
run_step() {
    local pid
    # --wait: once one rank exits, the others get 60 s before Slurm ends them (a rank that failed alone
    # must not leave the rest waiting in a collective); no --kill-on-bad-exit, which would end the others
    # the moment the first one exits 3 and lose their statuses.
    srun --wait=60 "$@" &
    pid=$!
    trap 'note "SIGUSR1: forwarding to the ranks"; kill -USR1 $pid 2>/dev/null' USR1
    trap 'note "SIGUSR2: forwarding to the ranks"; kill -USR2 $pid 2>/dev/null' USR2
    while true; do
        wait "$pid"
        STEP_STATUS=$?
        kill -0 "$pid" 2>/dev/null || break  # a trapped signal interrupted `wait`: the step still runs
    done
    trap - USR1 USR2
}

# Requeue this job (after the ranks saved and exited with RESUME_STATUS), unless the scheduler is ending
# it (this shell got SIGTERM: a cancel must stay a cancel, a scheduler requeue is already under way) or it
# restarted too often.
requeue_self() {
    local restarts=${SLURM_RESTART_COUNT:-0} out
    if [ "$GOT_SIGTERM" = 1 ]; then
        note "the scheduler is ending this job (SIGTERM): not requeued by this script; resubmitting resumes from the checkpoint"
        return $RESUME_STATUS
    fi
    if [ "$restarts" -ge "${MAX_RESTARTS:=20}" ]; then
        note "error: stopped to be resumed, but the job already restarted $restarts times (MAX_RESTARTS=$MAX_RESTARTS): not requeued"
        return $RESUME_STATUS
    fi
    # the requeue ends this job's processes with SIGTERM, scontrol itself possibly before it answers
    if out=$(scontrol requeue "$SLURM_JOB_ID" 2>&1) || [ "$GOT_SIGTERM" = 1 ]; then
        note "requeued (restart $((restarts + 1)) will resume from the last checkpoint)"
        return 0
    fi
    note "error: could not requeue ($out); the checkpoint is saved: submit the same command again to resume"
    return $RESUME_STATUS
}

# The exit of a training step: 0 done, RESUME_STATUS requeue, anything else an error pointing at the log.
finish_training() {
    case "$STEP_STATUS" in
        0) note "finished" ;;
        "$RESUME_STATUS") note "stopped to be resumed (checkpoint saved)"; requeue_self || exit $? ;;
        *) note "error: the ranks exited with status $STEP_STATUS (see the messages above)"; exit "$STEP_STATUS" ;;
    esac
}

# Training (cpt.sh, sft.sh): check the config against this job's ranks once, then one srun task per rank.
train() {
    local config=$1
    shift
    [ -f "$config" ] || fail "config $config not found (relative to $(pwd))"
    note "python -m megatron_tibetan.train --config $config $*"
    "$PYTHON" -m megatron_tibetan.train --config "$config" --check-world "${SLURM_NTASKS:-1}" "$@" ||
        fail "the config does not fit this job (above): nothing was started"
    run_step "$PYTHON" -m megatron_tibetan.train --config "$config" "$@"
    finish_training
}

# Evaluation (eval.sh): tools/evaluate.py in one task, on the GPU when the job has one. Not resumable: a
# pre-empted evaluation starts again from the beginning when the scheduler requeues it.
evaluate() {
    local args=("$@")
    [ ${#args[@]} -gt 0 ] || fail "usage: sbatch slurm/eval.sh --model NAME=DIR --ppl FILE ... --output OUT (tools/evaluate.py's arguments)"
    [[ " ${args[*]} " == *" --device "* || " ${args[*]}" == *" --device="* ]] || args+=(--device "$DEVICE")
    note "python tools/evaluate.py ${args[*]}"
    run_step --ntasks=1 "$PYTHON" "$ROOT/tools/evaluate.py" "${args[@]}"
    if [ "$STEP_STATUS" = 0 ]; then note "finished"; else note "error: tools/evaluate.py exited with status $STEP_STATUS (see above)"; fi
    exit "$STEP_STATUS"
}
