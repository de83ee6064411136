#!/usr/bin/env bash
# Companion step of benchmarks/gpu_suite.sh: run HERE, where a package index is reachable, before
# a GPU call. It downloads into .whl/ (ignored by git, carried to the GPU machine with
# `carry: [".whl"]`) the wheels that the lent machine's Python 3.12 lacks:
#
#   - what our packages need and the image does not hold: datasets, dill, multiprocess (datasets'
#     own), torchdata; versions from uv.lock, so the GPU runs what the tests here run;
#   - the build backend, to install our seven packages there from the checkout, offline:
#     hatchling and what it needs beyond the image (packaging >= 24.2, tomlkit,
#     trove-classifiers).
#
#   bash benchmarks/fetch_gpu_wheels.sh        # a few seconds; prints the folder's size
#
# Everything else (torch, transformers, accelerate, peft, safetensors, triton, pytest, ...) is
# preinstalled there (see the suite's requirement check, its first lines). The working tree that
# travels is limited to 64 MiB: the folder holds about 1.5 MB.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

exclude="$(git rev-parse --git-common-dir)/info/exclude"
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"

# name==version of each runtime wheel, as locked
pins=$(python3 - <<'EOF'
import tomllib

locked = {p["name"]: p["version"] for p in tomllib.load(open("uv.lock", "rb"))["package"]}
print(" ".join(f"{n}=={locked[n]}" for n in ("datasets", "dill", "multiprocess", "torchdata", "packaging")))
EOF
)
build="hatchling==1.33.0 tomlkit==0.15.3 trove-classifiers==2026.9.21.13"

rm -rf .whl
mkdir .whl
# shellcheck disable=SC2086  # the pins are separate arguments
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl $pins $build
ls .whl
echo "$(du -sh .whl | cut -f1) in .whl ($(ls .whl | wc -l) wheels; the limit on what travels is 64 MiB)"
