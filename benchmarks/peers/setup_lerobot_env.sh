#!/usr/bin/env bash
# Create benchmarks/peers/.venv-lerobot: LeRobot 0.4.4 in its own environment.
#
# Why a separate venv: LeRobot 0.4.4 declares torch<2.11 and torchvision<0.26,
# genba's environment runs torch 2.13. What installs here (see
# shared/machine-notes.md): torch 2.14.1 + torchvision 0.29.1 (a CUDA build that
# runs on the CPU, from local disk), then lerobot with --no-deps, then every
# other requirement the wheel's METADATA declares (torch/torchvision left out so
# pip never replaces them). LeRobot works with the newer torch for what we use
# (LeRobotDataset, ACT, Diffusion Policy, video decoding).
#
# Video (camera datasets): LeRobot 0.4.4 decodes with torchcodec, pinned to
# 0.11.1 (the build for torch 2.14; lerobot declares torchcodec<0.11, which
# resolves to 0.10.0, whose library fails to load against torch 2.14.1 with an
# undefined c10 symbol, so its requirement is dropped like torch's),
# and torchcodec loads the system FFmpeg libraries (libavutil & co.):
# `apt-get install -y ffmpeg`, run below when we are root and they are missing.
# Its `pyav` backend needs torchvision's VideoReader, which torchvision 0.29
# no longer has, so benchmarks/peers always opens with video_backend="torchcodec".
#
# Idempotent: an existing venv with a working `import lerobot` is kept.
# Usage: bash benchmarks/peers/setup_lerobot_env.sh [PYTHON]   (~7 GB, a few minutes)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv-lerobot"
PY="${1:-python3}"
LEROBOT_VERSION="0.4.4"
TORCH_PINS=("torch==2.14.1" "torchvision==0.29.1")
TORCHCODEC_PIN="torchcodec==0.11.1"

if ! ldconfig -p 2>/dev/null | grep -q "libavutil\.so"; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "[setup] system FFmpeg libraries for torchcodec: apt-get install -y ffmpeg"
        apt-get install -y -q ffmpeg >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q ffmpeg >/dev/null; }
    else
        echo "[setup] note: torchcodec needs the system FFmpeg libraries; run (as root): apt-get install -y ffmpeg" >&2
    fi
fi

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import lerobot, msgpack, torchcodec" 2>/dev/null; then
    echo "[setup] $VENV already has lerobot $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("lerobot"))')"
    exit 0
fi

echo "[setup] creating $VENV with $("$PY" --version)"
"$PY" -m venv "$VENV"
# pip warns once per package that this machine's extra local indexes lack it: noise, filtered.
pip_install() {
    "$VENV/bin/python" -m pip install --quiet "$@" 2>&1 | { grep -v "^WARNING: Location '.*' is ignored" || true; }
}

echo "[setup] torch + torchvision (${TORCH_PINS[*]})"
pip_install "${TORCH_PINS[@]}" numpy

echo "[setup] lerobot==$LEROBOT_VERSION (no deps)"
WHEELS="$(mktemp -d)"
trap 'rm -rf "$WHEELS"' EXIT
"$VENV/bin/python" -m pip download --quiet --no-deps "lerobot==$LEROBOT_VERSION" -d "$WHEELS"
WHEEL="$(ls "$WHEELS"/lerobot-*.whl)"

# The base requirements (no extras), with environment markers evaluated here,
# without torch/torchvision.
REQS="$WHEELS/requirements.txt"
"$VENV/bin/python" - "$WHEEL" "$REQS" <<'PY'
import sys, zipfile
from pip._vendor.packaging.requirements import Requirement
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    lines = z.read(meta).decode().splitlines()
keep = []
for line in lines:
    if not line.startswith("Requires-Dist:"):
        continue
    req = Requirement(line.split(":", 1)[1].strip())
    if req.name.lower() in ("torch", "torchvision", "torchcodec"):  # pinned by this script instead
        continue
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue  # an optional extra or another platform
    keep.append(str(req).split(";")[0].strip())
open(out, "w").write("\n".join(keep) + "\n")
print("[setup] requirements:", ", ".join(keep))
PY
pip_install -r "$REQS" "${TORCH_PINS[@]}" "$TORCHCODEC_PIN"
pip_install --no-deps "$WHEEL"
# msgpack: the pipe protocol between benchmarks/peers/adapter.py and lerobot_side.py.
pip_install msgpack
"$VENV/bin/python" -c "import lerobot, torch; print('[setup] lerobot', lerobot.__version__ if hasattr(lerobot, '__version__') else '', 'torch', torch.__version__)"
echo "[setup] done: $VENV"
