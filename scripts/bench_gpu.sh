#!/usr/bin/env bash
# The GPU measurements of issue 6 (BENCHMARKS.md, "GPU targets"), ours and upstream in the same run, and
# issue 15's DINOv3 steps (8-10), issue 16's TensorRT engine (11) and issue 27's multi-head model (12).
#
# Run from the repository root. Made for one call of the device tool (one H100; 15 minutes of device
# time in all, 10 per command):
#   here, once:   echo /.upstream/ >> .git/info/exclude
#                 mkdir -p .upstream && cp -r /path/to/dinov2/. .upstream/      # a facebookresearch/dinov2 checkout
#                 echo /.upstream_dinov3/ >> .git/info/exclude                  # and for steps 8-10, DINOv3's package:
#                 mkdir -p .upstream_dinov3 && git -C /path/to/dinov3 archive HEAD dinov3 | tar -x -C .upstream_dinov3
#   device call:  command "bash scripts/bench_gpu.sh", carry [".upstream", ".upstream_dinov3"], timeout_s 600
# Elsewhere: `OUT=somewhere UPSTREAM=/path/to/dinov2 UPSTREAM_DINOV3=/path/to/dinov3 bash scripts/bench_gpu.sh`.
# A subset (e.g. to split the work over two calls if one runs out of time): STEPS="3 4" bash scripts/bench_gpu.sh
# On the H100 (2026-11-26) steps 1-4 took 87 s and steps 5-7 200 s (compiling); both fit one call.
# Steps 8-10 (DINOv3 ViT-L/16 and 7B/16) have not run yet: give them a call of their own, STEPS="8 9 10".
# Step 12 (multi-head, ViT-L/14) has not run yet either: alone it needs no upstream checkout, STEPS="12".
# Every step runs whatever the others did: a failed step prints FAILED with its command and the script goes on.
#
# Upstream's code is imported from that checkout (torch.hub.load(dir, source="local"), pretrained=False):
# the device machine reaches no network, and nothing of upstream belongs in this repository.
# Every path gets the same random weights; bf16 means autocast. Ours stores its frozen backbone's matrix
# weights in bf16 (DenseModel.cast_backbone, as train/eval/predict do); the references keep fp32 weights
# under autocast, as upstream measured.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
OUT=${OUT:-bench_out}
UPSTREAM=${UPSTREAM:-.upstream}
UPSTREAM_DINOV3=${UPSTREAM_DINOV3:-.upstream_dinov3}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
up=()
if [ -f "$UPSTREAM/hubconf.py" ]; then up=(--upstream "$UPSTREAM"); else echo "no upstream checkout at $UPSTREAM: ours vs timm only"; fi
up3=()
if [ -f "$UPSTREAM_DINOV3/dinov3/hub/backbones.py" ]; then up3=(--upstream "$UPSTREAM_DINOV3")
else echo "no DINOv3 package at $UPSTREAM_DINOV3: DINOv3 steps ours alone"; fi
bench() {
  "$PYTHON" -m dense.bench --device cuda --precision bf16 --iters 10 --warmup 3 "$@" || echo "FAILED (exit $?): dense.bench $*"
}
STEPS=${STEPS:-1 2 3 4 5 6 7 8 9 10 11 12}
step() { [[ " $STEPS " == *" $1 "* ]]; }  # is step $1 asked for?

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$PYTHON" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"
  # 1. ViT-g/14 backbone, batch 32, 518x518 (upstream 104 img/s, 370 TFLOP/s; target >= 450 TFLOP/s)
  step 1 && bench --backbone vitg14 --head depth_linear4 --work backbone --size 518x518 --batch 32 "${up[@]}" \
    --json "$OUT/1_vitg_backbone.json"
  # 2. ViT-L/14 + DPT and + linear4 inference, batch 16, 480x640 (upstream 149 img/s 9.2 GB, 111 img/s 31.3 GB)
  step 2 && bench --backbone vitl14 --head depth_dpt,depth_linear4 --work predict --size 480x640 --batch 16 "${up[@]}" \
    --json "$OUT/2_vitl_predict.json"
  # 3. DPT head training step, batch 8, 416x544, ViT-L and ViT-g (upstream 119 and 65 img/s; g peaks 11.9 GB)
  step 3 && bench --backbone vitl14,vitg14 --head depth_dpt --work train --size 416x544 --batch 8 "${up[@]}" \
    --json "$OUT/3_dpt_train_b8.json"
  # 4. Memory target: ours trains ViT-g/14 DPT at batch 16, 416x544, within 16 GB (ours alone).
  step 4 && bench --backbone vitg14 --head depth_dpt --work train --size 416x544 --batch 16 --reference none \
    --json "$OUT/4_vitg_dpt_train_b16.json"
  # 5. torch.compile on the backbone target (ours alone: compiling three ViT-g would not fit the time).
  step 5 && bench --backbone vitg14 --head depth_linear4 --work backbone --size 518x518 --batch 32 --compile on \
    --reference none --json "$OUT/5_vitg_backbone_compiled.json"
  # 6. compile=true on the DPT training steps (ours: DenseModel.compile, backbone compiled, head eager in training).
  step 6 && bench --backbone vitl14,vitg14 --head depth_dpt --work train --size 416x544 --batch 8 --compile on \
    --reference none --json "$OUT/6_dpt_train_compiled.json"
  # 7. compile=true on ViT-L/14 + DPT inference (backbone and head compiled).
  step 7 && bench --backbone vitl14 --head depth_dpt --work predict --size 480x640 --batch 16 --compile on \
    --reference none --json "$OUT/7_vitl_dpt_predict_compiled.json"
  # 8. DINOv3 bf16 backbone TFLOP/s: ViT-L/16 (batch 32) and ViT-7B/16 (batch 8) at 512x512, with upstream's
  #    backbone (same weights) when its package is there.
  step 8 && bench --backbone vitl16 --head depth_dpt --work backbone --size 512x512 --batch 32 --reference upstream \
    "${up3[@]}" --json "$OUT/8_dinov3_vitl16_backbone.json"
  step 8 && bench --backbone vit7b16 --head depth_dpt --work backbone --size 512x512 --batch 8 --reference upstream \
    "${up3[@]}" --json "$OUT/8_dinov3_vit7b16_backbone.json"
  # 9. DINOv3 + DPT inference img/s and peak memory, batch 16 (7B: 4), 480x640 (ours alone: upstream's DPT is 7B-only
  #    and trained on SYNTHMIX; its hub builds it from files we do not have).
  step 9 && bench --backbone vitl16 --head depth_dpt --work predict --size 480x640 --batch 16 --reference none \
    --json "$OUT/9_dinov3_vitl16_dpt_predict.json"
  step 9 && bench --backbone vit7b16 --head depth_dpt --work predict --size 480x640 --batch 4 --reference none \
    --json "$OUT/9_dinov3_vit7b16_dpt_predict.json"
  # 10. A frozen ViT-7B/16 under a DPT head: one training step, batch 8, 416x544 (ours alone).
  step 10 && bench --backbone vit7b16 --head depth_dpt --work train --size 416x544 --batch 8 --reference none \
    --json "$OUT/10_dinov3_vit7b16_dpt_train.json"
  # 11. Issue 16: a TensorRT engine built from our ONNX file (ViT-L/14 + DPT, shape profile 1x3x224x224 to
  #     16x3x640x640, fp16), timed at batch 16, 480x640: compare with step 7 (PyTorch bf16 + compile, same shape).
  step 11 && { "$PYTHON" -m dense.bench.onnx --backbone vitl14 --head depth_dpt --batch 16 --height 480 --width 640 \
    --tensorrt "$OUT/11_vitl14_dpt.onnx" || echo "FAILED (exit $?): dense.bench.onnx --tensorrt"; }
  # 12. Issue 27: one backbone pass feeding depth_dpt + seg_linear (MultiHeadModel) against the two single-head
  #     models one after the other, ViT-L/14, batch 16, 480x640, bf16: inference and a training step (img/s, peak memory).
  step 12 && { "$PYTHON" -m dense.bench.multi --device cuda --precision bf16 --backbone vitl14 \
    --heads depth=depth_dpt,seg=seg_linear --size 480x640 --batch 16 --iters 10 --warmup 3 \
    --json "$OUT/12_vitl14_multi_head.json" || echo "FAILED (exit $?): dense.bench.multi"; }
  :  # a step left out is not a failure (each step's own errors are in the log)
} 2>&1 | tee "$OUT/log.txt"
