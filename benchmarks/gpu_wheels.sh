#!/usr/bin/env bash
# Fill .whl/ with the wheels the GPU machine's image lacks, for benchmarks/gpu_check.sh.
#
# The GPU machine (one H200; docs: README "GPU check (issue 16)") has no package index: its
# image holds torch, transformers, numpy, networkx, huggingface-hub, safetensors, ... but not
# diffusers or simpy. Run this script HERE, where pip reaches an index; the device call then
# names ".whl" in its carry, and gpu_check.sh installs the wheels there with --no-index.
#
#   bash benchmarks/gpu_wheels.sh            # versions as installed in this environment
#
# Exactly these, each pinned (two versions of one package stop the install there):
#   diffusers           the version installed here (the one the tests run against)
#   simpy               the simulator's engine (sim/engine.py)
#   importlib_metadata  a declared requirement of diffusers the image lacks (on Python 3.12
#                       diffusers uses the standard library's importlib.metadata; carried so
#                       that every declared requirement is met there)
#   lazy-importer       imported by importlib_metadata 10 on Python < 3.15, not in the image
#                       (importlib_metadata's other requirement, zipp, is)
# diffusers' other requirements (filelock, huggingface-hub>=1.32, numpy, regex, requests,
# safetensors>=0.8, Pillow) are in the image: /work/.library/device/KINDS.md lists them, with
# huggingface-hub 1.33.0 and safetensors 0.8.0 as seen there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

version() {  # installed version of package $1 here, or fail with one line
  local v
  v=$("$PYTHON" -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p')
  if [ -z "$v" ]; then
    echo "error: $1 is not installed here; pip install -e '.[dev]' first" >&2
    exit 2
  fi
  echo "$v"
}

PINS=("diffusers==$(version diffusers)" "simpy==$(version simpy)"
      "importlib_metadata==$(version importlib_metadata)"
      "lazy-importer==$(version lazy-importer)")

rm -rf .whl
mkdir -p .whl
# Pure-Python wheels (py3-none-any) match any platform; the platform tags only let pip accept
# a binary one if a pin ever resolves to one. Python 3.12 is the GPU image's interpreter.
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d .whl "${PINS[@]}"

# The tree travelling to the GPU machine is limited to 64 MiB in all.
ls -l .whl
du -sh .whl
# Requirements of the carried diffusers, to compare with the image's package list.
if command -v unzip >/dev/null 2>&1; then
  unzip -p .whl/diffusers-*.whl '*/METADATA' | grep '^Requires-Dist' | grep -v extra || true
fi
