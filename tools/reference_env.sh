#!/usr/bin/env bash
# The reference environment: evalxai with torchvision, timm, transformers, zennit and LXT, for the tests marked
# `reference` (the zoos and the equalities with zennit and LXT). It needs torch 2.14.1 (about 6 GB): the CPU wheel
# 2.13.0 of the main environment has no torchvision that imports.
#
#   tools/reference_env.sh [VENV]            # default .venv-ref
#   VENV/bin/python -m pytest -m reference
#
# zennit and lxt come with --no-deps: their metadata asks for packages the tests do not use (lxt: bitsandbytes,
# open_clip_torch, accelerate; both: a torchvision of their own choosing).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv-ref}"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet -c constraints-reference.txt torch torchvision
"$venv/bin/pip" install --quiet -c constraints-reference.txt -e ".[dev,reference]"
"$venv/bin/pip" install --quiet --no-deps -c constraints-reference.txt zennit lxt
"$venv/bin/python" -c "import torch, torchvision, timm, transformers, zennit, lxt; print('reference environment:', \
torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__, 'transformers', \
transformers.__version__)"
