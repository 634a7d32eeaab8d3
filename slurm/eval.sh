#!/bin/bash
# Evaluation on a Slurm cluster: tools/evaluate.py (perplexity, bits per byte, translation metrics) in one
# task, on one GPU (--device cuda is added when the job has a GPU and no --device is given).
#
#   sbatch slurm/eval.sh --model cpt=runs/cpt/ckpt --ppl ../shared/data/eval/flores200.dev.bo \
#       --translate zh=../shared/data/eval/flores200.dev.zh --ref ../shared/data/eval/flores200.dev.bo --output out/eval
#   sbatch --gpus-per-node=0 --cpus-per-task=2 slurm/eval.sh ...              # a CPU node
#
# Logs as slurm/cpt.sh: Slurm's <name>-<job>.out and LOG_DIR/<name>-<job>-restart<N>.log. Not resumable: a
# pre-empted evaluation starts again from the beginning when the scheduler requeues it.
#SBATCH --job-name=eval
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
set -uo pipefail

STAGE=eval
if [ -n "${SLURM_JOB_ID:-}" ] && [ -z "${MEGATRON_TIBETAN_ROOT:-}" ]; then  # the submitted script's repository
    submitted=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')
    MEGATRON_TIBETAN_ROOT=$(cd "$(dirname "${submitted:-$SLURM_SUBMIT_DIR/slurm/x}")/.." 2>/dev/null && pwd)
fi
ROOT=${MEGATRON_TIBETAN_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
# shellcheck source=slurm/common.sh
source "$ROOT/slurm/common.sh" || { echo "[eval.sh] error: $ROOT/slurm/common.sh not found: set MEGATRON_TIBETAN_ROOT" >&2; exit 2; }

open_run_log
setup_environment
evaluate "$@"
