#!/usr/bin/env bash
# The Python packages that `python -m benchmarks` (the train and loop works: the LightningModule, the
# datamodule, the recipes) needs and the GPU machine's image lacks, as wheels in .whl/ (git-ignored), for
# benchmarks/scripts/bench_gpu.sh, which installs them there when the device call carries the folder:
#   here, once:   bash benchmarks/scripts/device_wheels.sh       (about 8 MB; needs pip and a package index)
#   device call:  carry [".upstream", ".upstream_dinov3", ".whl"]
# The image has torch, timm, lightning, torchmetrics, opencv-python-headless, threadpoolctl, scipy and PyYAML
# (benchmarks/BENCHMARKS.md, "Running it"); these are the rest, for its Python 3.12 on x86-64.
set -euo pipefail
cd "$(dirname "$0")/../.."  # the clone's root
PYTHON=${PYTHON:-python3}
exclude=$(git rev-parse --git-path info/exclude)
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo /.whl/ >> "$exclude"
mkdir -p .whl
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  hydra-core==1.3.2 omegaconf==2.3.0 albumentations==2.0.8 albucore==0.0.24 pydantic==2.14.4 \
  pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 \
  simsimd==6.5.16 stringzilla==5.3.2
# PyPI has antlr4-python3-runtime 4.9.3 (what hydra 1.3 needs) as a source archive only: a pure-Python wheel
# built here.
"$PYTHON" -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls .whl
