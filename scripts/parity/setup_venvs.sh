#!/usr/bin/env bash
# Build the reference venvs used by make_fixtures.py (outside the repo; never the project's own venv).
#
#   bash scripts/parity/setup_venvs.sh [ROOT]      (default ROOT=/work/refvenvs)
#
#   ROOT/ir : image-reward 1.5 (needs transformers<5; BLIP's med_config and a BERT vocab are written by
#             make_fixtures.py, `clip` is stubbed there) -> imagereward fixtures
#   ROOT/oc : open-clip-torch (HPSv2's architecture) + transformers<5 CLIPModel/CLIPProcessor (slow, PIL path)
#             -> hpsv2, clip, pickscore, aesthetic fixtures
# torch/torchvision are pinned first so pip does not pick another build; both venvs are ~5-6 GB.
set -euo pipefail
ROOT="${1:-/work/refvenvs}"
PY="${PYTHON:-python3.11}"
mkdir -p "$ROOT"

mk() {
  local name="$1"; shift
  if [ -x "$ROOT/$name/bin/python" ] && [ -f "$ROOT/$name/.ok" ]; then echo "[$name] exists"; return; fi
  "$PY" -m venv "$ROOT/$name"
  "$ROOT/$name/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
  "$ROOT/$name/bin/pip" install -q "$@"
  touch "$ROOT/$name/.ok"
  echo "[$name] ready"
}

mk ir "image-reward==1.5" "transformers>=4.30,<5" safetensors pillow numpy
mk oc open-clip-torch "transformers>=4.30,<5" safetensors pillow numpy
