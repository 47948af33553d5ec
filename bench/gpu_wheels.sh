#!/usr/bin/env bash
# Download, here, the wheels a lent GPU machine lacks for bench/gpu.sh, into .wheels/ (ignored by
# git): its image has Python 3.12 with torch, accelerate, timm, tokenizers, huggingface_hub,
# pyarrow and the rest, but not libcst, datasets, rapidfuzz, dill or multiprocess, and an older
# transformers. Versions are this venv's, so the GPU runs what the tests here ran.
#
#   bash bench/gpu_wheels.sh          # here, once
#
# Then, in the device tool: run(command=<the line below>, carry=[".wheels"], timeout_s=570):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .wheels/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && PYTHON=python3 bash bench/gpu.sh 2>&1 | tee $OUT/gpu.log; cp bench/RESULTS.md $OUT/
# (RESULTS.md comes back under the reply's files_at: copy its new lines into bench/RESULTS.md; gpu.log
# holds the JSON lines even when the run is cut off at its limit.)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
python="${PYTHON:-.venv/bin/python}"
packages=(transformers datasets libcst rapidfuzz dill multiprocess)
specs=()
for package in "${packages[@]}"; do
  specs+=("$package==$("$python" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$package")")
done
grep -qxF '/.wheels/' .git/info/exclude 2>/dev/null || echo '/.wheels/' >> .git/info/exclude
rm -rf .wheels
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .wheels "${specs[@]}"
ls -1 .wheels
du -sh .wheels
