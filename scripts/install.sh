#!/usr/bin/env bash
# One command for a fresh Linux machine with Python 3.11: the project, its test tools, and a
# transformers 4.49 overlay the tests use to check the 4.x era beside the newest 5.x.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch/torchvision pinned to the releases this machine serves from local disk (an unpinned torch
# pulls ~3 GB of CUDA wheels); timm needs torchvision.
.venv/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1 -e '.[dev,lora]'
# transformers 4.49 is the last release on which upstream Florence-2 runs with only the output fix;
# tests run it through PYTHONPATH=.venv/compat/tf449 (with the huggingface-hub, tokenizers and datasets of its era).
.venv/bin/python -m pip install --quiet --no-deps --upgrade --target .venv/compat/tf449 \
    transformers==4.49.0 tokenizers==0.21.1 huggingface-hub==0.36.2 datasets==4.4.1 httpx httpcore \
    requests urllib3 charset-normalizer idna certifi
echo "installed: $(.venv/bin/florence-patch --version 2>/dev/null || echo florence-patch)"
