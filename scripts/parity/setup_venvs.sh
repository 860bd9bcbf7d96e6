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

# HPSv2's eval transform (ResizeMaxSize) lives in the hpsv2 wheel, whose own dependencies pin old tools; take
# only its two transform files from the wheel, without installing it.
if [ ! -f "$ROOT/hpsv2_src/hps_transform/transform.py" ]; then
  "$ROOT/oc/bin/pip" download -q --no-deps hpsv2==1.2.0 -d "$ROOT/dl"
  "$ROOT/oc/bin/python" - "$ROOT" <<'PY'
import glob, os, sys, zipfile
root = sys.argv[1]
whl = sorted(glob.glob(os.path.join(root, "dl", "hpsv2-1.2.0-*.whl")))[0]
dst = os.path.join(root, "hpsv2_src", "hps_transform")
os.makedirs(dst, exist_ok=True)
with zipfile.ZipFile(whl) as z:
    for name in ("transform.py", "constants.py"):
        open(os.path.join(dst, name), "wb").write(z.read(f"hpsv2/src/open_clip/{name}"))
open(os.path.join(dst, "__init__.py"), "w").write("")
print("hpsv2 transform files ->", dst)
PY
fi
