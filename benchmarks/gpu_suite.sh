#!/usr/bin/env bash
# The GPU suite on the lent GPU machine, in one call (see benchmarks/README.md, "GPU suite"):
#
#   bash benchmarks/gpu_suite.sh [gpu_suite.py options]     # from the repository root
#
# Before the call, here: `bash benchmarks/fetch_gpu_wheels.sh` (the wheels that machine lacks, into
# .whl/), and the call carries `.whl`. There, with no network and its own Python (torch,
# transformers, accelerate, peft, safetensors, triton, pytest preinstalled), this script
#   1. installs the carried wheels into a folder of their own (--no-deps --no-index);
#   2. builds and installs our seven packages from the checkout with the carried build backend
#      (--no-deps --no-index --no-build-isolation), or, if that fails, puts their src/ folders on
#      PYTHONPATH (the modules, without the installed metadata and console scripts);
#   3. runs benchmarks/gpu_suite.py, which checks the installed versions against our requirements
#      in its first lines, then writes $OUT/gpu_suite.json and prints the table;
#   4. packs the items' logs and run folders into $OUT/gpu_suite_work.tgz.
# Without $OUT (e.g. on a GPU machine of your own) the results go to runs/gpu_suite/.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python=${PYTHON:-python3}
site=${GPU_SUITE_SITE:-/tmp/gpu_suite_site}
out=${OUT:-runs/gpu_suite}
mkdir -p "$out" "$site"
pip=("$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade)

if ! compgen -G ".whl/*.whl" >/dev/null; then
    echo "error: no wheels in .whl/: run benchmarks/fetch_gpu_wheels.sh here and carry .whl" >&2
    exit 3
fi
"${pip[@]}" --target "$site" .whl/*.whl || exit 3
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
if "${pip[@]}" --no-build-isolation --target "$site" packages/automodel-*; then
    echo "installed our seven packages from the checkout into $site"
else
    echo "warning: building our packages failed; using their src/ folders on PYTHONPATH" >&2
    for src in packages/automodel-*/src; do PYTHONPATH="$PYTHONPATH:$PWD/$src"; done
fi

PYTHONUNBUFFERED=1 "$python" benchmarks/gpu_suite.py --out "$out/gpu_suite.json" \
    --work /tmp/gpu_suite_work "$@" 2>&1 | tee "$out/gpu_suite.log"
status=${PIPESTATUS[0]}
tar czf "$out/gpu_suite_work.tgz" -C /tmp gpu_suite_work 2>/dev/null
exit "$status"
