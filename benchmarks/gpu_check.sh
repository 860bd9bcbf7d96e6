#!/usr/bin/env bash
# Every GPU measurement in one command (benchmarks/gpu_check.py; see benchmarks/README.md, "GPU check").
#
#   bash benchmarks/gpu_check.sh --fetch-wheels   # here, once, with package-index access: the wheels the GPU
#                                                 # image lacks, into .whl/ (ignored by git; carried to the device)
#   bash benchmarks/gpu_check.sh [ARGS]           # on the GPU machine (nothing can be fetched there): install
#                                                 # .whl/ into /tmp/site, then gpu_check.py ARGS
#   bash benchmarks/gpu_check.sh --dry-run        # anywhere: the same code paths on tiny CPU models
#
# The GPU image already has torch, transformers, accelerate, huggingface_hub, safetensors, typer, rich, pyyaml,
# pillow, numpy and pytest. It lacks diffusers, pydantic, submitit and TRL 0.23.1 (with datasets, which TRL
# imports), and its peft may be older: those come as wheels, pinned to what the project's environment runs.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
  diffusers==0.42.1 peft==0.21.2 importlib_metadata==10.2.0 zipp==4.1.2
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0
  submitit==1.5.4 cloudpickle==3.1.3
  trl==0.23.1 datasets==5.2.0 dill==0.4.1 multiprocess ftfy==6.3.1 wcwidth
)

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  mkdir -p .whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${WHEELS[@]}"
  du -sh .whl
  exit 0
fi

if [[ "${1:-}" != "--dry-run" ]] && compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=python3
if [[ "${1:-}" == "--dry-run" && -n "${REWARDTUNE_PYTHON:-}" ]]; then PY="$REWARDTUNE_PYTHON"; fi
exec "$PY" benchmarks/gpu_check.py "$@"
