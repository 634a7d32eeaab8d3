#!/usr/bin/env bash
# The GPU path check (benchmarks/gpu_check.py) in one call on a GPU machine without network access.
#
# Prepare once, on a machine with PyPI access, from the repository root (the wheel is ignored by git):
#   bash benchmarks/gpu_check.sh --download        # megatron-core 0.19.2 for CPython 3.12 into .whl/
# Then on the GPU machine (Python 3.12 with torch, transformers, safetensors, tokenizers, matplotlib, psutil):
#   bash benchmarks/gpu_check.sh [gpu_check.py options]
# Where the machine receives the working tree plus named ignored paths: command `bash benchmarks/gpu_check.sh`,
# carried paths [".whl"], a time limit of 480 s (3-5 minutes expected on one H200).
# Results: $OUT/gpu_check.json, gpu_check.png and gpu_check.log (default OUT: runs/gpu_check); the table last.
# megatron-core's own requirements (torch, numpy, packaging) and this project's are expected on the machine;
# only megatron-core is carried. `--dry-run` runs the same stages on the CPU with tiny sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
MEGATRON_CORE=${MEGATRON_CORE:-megatron-core==0.19.2}

if [ "${1:-}" = "--download" ]; then
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")"
    grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
    # the wheel's tag is manylinux_2_24/2_28: manylinux2014 alone finds nothing
    "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "$MEGATRON_CORE"
    ls -l .whl
    exit 0
fi

export OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
SITE=/tmp/gpu_check_site
installed() {  # whether a module can be imported, without importing it (megatron.core takes seconds)
    (cd / && "$PYTHON" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)" 2>/dev/null)
}
if ! installed megatron.core; then
    ls .whl/*.whl >/dev/null 2>&1 || { echo "gpu_check.sh: megatron-core is not installed and .whl/ holds no wheel (run with --download first)" >&2; exit 2; }
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
fi
# the project itself, without its dependencies (those the check needs are on the machine); from the
# checkout if that fails
if installed megatron_tibetan; then :
elif ! "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --target "$SITE" . ; then
    echo "gpu_check.sh: installing the project failed; running it from the checkout" >&2
    SITE=$SITE:$PWD
fi
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
"$PYTHON" benchmarks/gpu_check.py "$@" 2>&1 | tee "$OUT/gpu_check.log"
