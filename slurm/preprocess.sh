#!/bin/bash
# Tokenise a corpus at cluster scale: one array task per input file (a shard), on CPU nodes.
#
#   ls corpus/*.txt.xz > runs/data/nanhai.list                       # one input file per line, in order
#   N=$(wc -l < runs/data/nanhai.list)
#   sbatch --array=0-$((N - 1)) slurm/preprocess.sh runs/data/nanhai.list runs/data/nanhai_shards \
#       --tokenizer smollm2 --append-eod                              # any tools/preprocess_data.py flags
#   python tools/merge_datasets.py --input runs/data/nanhai_shards --output-prefix runs/data/nanhai_smollm2
#
# Task I runs tools/preprocess_data.py on line I+1 of the list and writes OUTPUT_DIR/shard_IIIII (the
# .bin/.idx and _stats.json); --workers defaults to the task's CPUs. One big file is split into shards
# first, e.g. `xz -dc big.txt.xz | split -l 200000 -d -a 5 --filter='xz -T1 > $FILE.txt.xz' - shards/part_`.
# The repository is the one the script was submitted from (or MEGATRON_TIBETAN_ROOT); PYTHON defaults to `python`.
#SBATCH --job-name=preprocess
#SBATCH --array=0-0
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --output=%x-%A_%a.out
set -euo pipefail

fail() { echo "[preprocess.sh] error: $*" >&2; exit 2; }

[ $# -ge 2 ] || fail "usage: sbatch --array=0-<N-1> slurm/preprocess.sh INPUT_LIST OUTPUT_DIR [preprocess_data.py flags]"
list=$1 out_dir=$2
shift 2
[ -f "$list" ] || fail "input list $list not found (one input file per line; $(pwd) is the working directory)"
if [ -n "${SLURM_JOB_ID:-}" ] && [ -z "${MEGATRON_TIBETAN_ROOT:-}" ]; then  # the submitted script's repository
    submitted=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/^ *Command=\([^ ]*\).*/\1/p' | head -1)
    MEGATRON_TIBETAN_ROOT=$(cd "$(dirname "${submitted:-$SLURM_SUBMIT_DIR/slurm/x}")/.." 2>/dev/null && pwd)
fi
root=${MEGATRON_TIBETAN_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
[ -f "$root/tools/preprocess_data.py" ] || fail "$root/tools/preprocess_data.py not found: set MEGATRON_TIBETAN_ROOT to the repository"
task=${SLURM_ARRAY_TASK_ID:-}
[ -n "$task" ] || fail "not an array task: submit with sbatch --array=0-<N-1> (N = number of lines of $list)"

mapfile -t inputs < <(grep -v '^[[:space:]]*$' "$list")
count=${#inputs[@]}
[ "$task" -lt "$count" ] || fail "array task $task but $list names only $count inputs: submit with --array=0-$((count - 1))"
[ "${SLURM_ARRAY_TASK_MAX:-0}" -eq $((count - 1)) ] || echo "[preprocess.sh] warning: the array ends at task ${SLURM_ARRAY_TASK_MAX:-?} but $list names $count inputs" >&2

mkdir -p "$out_dir"
prefix=$(printf '%s/shard_%05d' "$out_dir" "$task")
workers=${SLURM_CPUS_PER_TASK:-1}
echo "[preprocess.sh] job ${SLURM_ARRAY_JOB_ID:-?} task $task/$count on $(hostname): ${inputs[$task]} -> $prefix ($workers workers)"
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
exec "${PYTHON:-python}" "$root/tools/preprocess_data.py" --input "${inputs[$task]}" --output-prefix "$prefix" \
    --workers "$workers" --no-progress "$@"
