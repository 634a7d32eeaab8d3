#!/bin/bash
# Continual pretraining on a Slurm cluster: one srun task per GPU, requeued after a pre-emption warning.
#
#   sbatch slurm/cpt.sh configs/cpt/qwen2.5-7b.yaml [key.sub=value ...]
#   sbatch --nodes=4 --time=48:00:00 --partition=gpu slurm/cpt.sh CONFIG ...   # any #SBATCH line, overridden
#   sbatch --gpus-per-node=0 --ntasks=2 --cpus-per-task=1 slurm/cpt.sh configs/cpt/tiny-cpu.yaml \
#       parallel.tensor_model_parallel_size=2                                  # CPU-only nodes: gloo
#
# Submit from the repository root with the Python environment active (sbatch passes it on), or set
# MEGATRON_TIBETAN_ROOT and PYTHON. Logs: Slurm's <name>-<job>.out (one line per attempt) and
# LOG_DIR/<name>-<job>-restart<N>.log (default LOG_DIR=logs), one per attempt.
# Pre-emption: 180 s before the time limit Slurm sends USR1 to every rank (`--signal=USR1@180`, the
# step-level form: it reaches the ranks directly); so does `scancel --signal=USR1 JOB`. Every rank ends its
# step, they save together and exit 3; this script then requeues the job (at most MAX_RESTARTS=20 times),
# which resumes from the checkpoint. A SIGTERM (scancel, scontrol requeue, pre-emption, time limit) also
# saves, but the scheduler decides what follows: the job is not requeued by this script.
#SBATCH --job-name=cpt
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=USR1@180
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
set -uo pipefail

STAGE=cpt
if [ -n "${SLURM_JOB_ID:-}" ] && [ -z "${MEGATRON_TIBETAN_ROOT:-}" ]; then  # the submitted script's repository
    submitted=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')
    MEGATRON_TIBETAN_ROOT=$(cd "$(dirname "${submitted:-$SLURM_SUBMIT_DIR/slurm/x}")/.." 2>/dev/null && pwd)
fi
ROOT=${MEGATRON_TIBETAN_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
# shellcheck source=slurm/common.sh
source "$ROOT/slurm/common.sh" || { echo "[cpt.sh] error: $ROOT/slurm/common.sh not found: set MEGATRON_TIBETAN_ROOT" >&2; exit 2; }

[ $# -ge 1 ] || fail "usage: sbatch [sbatch options] slurm/cpt.sh CONFIG.yaml [key.sub=value ...]"
CONFIG=$1
shift
open_run_log
setup_environment
train "$CONFIG" "$@"
