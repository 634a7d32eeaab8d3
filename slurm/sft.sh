#!/bin/bash
# Supervised fine-tuning on a Slurm cluster: the same entry point and launch as slurm/cpt.sh (SFT is the
# same loop with an SFT config: configs/sft/*.yaml), one srun task per GPU, requeued after a pre-emption
# warning.
#
#   sbatch slurm/sft.sh configs/sft/FILE.yaml checkpoint.load=runs/cpt/ckpt [key.sub=value ...]
#   sbatch --nodes=2 --time=08:00:00 slurm/sft.sh CONFIG ...                   # any #SBATCH line, overridden
#
# Everything else (environment, logs, pre-emption and requeue, CPU-only nodes) as in slurm/cpt.sh.
#SBATCH --job-name=sft
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=08:00:00
#SBATCH --requeue
#SBATCH --signal=USR1@180
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
set -uo pipefail

STAGE=sft
if [ -n "${SLURM_JOB_ID:-}" ] && [ -z "${MEGATRON_TIBETAN_ROOT:-}" ]; then  # the submitted script's repository
    submitted=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')
    MEGATRON_TIBETAN_ROOT=$(cd "$(dirname "${submitted:-$SLURM_SUBMIT_DIR/slurm/x}")/.." 2>/dev/null && pwd)
fi
ROOT=${MEGATRON_TIBETAN_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
# shellcheck source=slurm/common.sh
source "$ROOT/slurm/common.sh" || { echo "[sft.sh] error: $ROOT/slurm/common.sh not found: set MEGATRON_TIBETAN_ROOT" >&2; exit 2; }

[ $# -ge 1 ] || fail "usage: sbatch [sbatch options] slurm/sft.sh CONFIG.yaml [key.sub=value ...]"
CONFIG=$1
shift
open_run_log
setup_environment
train "$CONFIG" "$@"
