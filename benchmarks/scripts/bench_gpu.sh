#!/usr/bin/env bash
# The GPU measurements of issue 6 (benchmarks/BENCHMARKS.md, "GPU targets"), ours and upstream in the same
# run, issue 15's DINOv3 steps (8-10), issue 16's TensorRT engine (11), issue 22's loop beside the step (12-15),
# issue 26's segmentation heads (seg) and issue 27's multi-head model (multi).
#
# Run from the repository root. Made for one call of the device tool (one H100; 15 minutes of device
# time in all, 10 per command):
#   here, once:   echo /.upstream/ >> .git/info/exclude
#                 mkdir -p .upstream && cp -r /path/to/dinov2/. .upstream/      # a facebookresearch/dinov2 checkout
#                 echo /.upstream_dinov3/ >> .git/info/exclude                  # and for steps 8-10, DINOv3's package:
#                 mkdir -p .upstream_dinov3 && git -C /path/to/dinov3 archive HEAD dinov3 | tar -x -C .upstream_dinov3
#                 bash benchmarks/scripts/device_wheels.sh                      # the packages the image lacks, in .whl/
#   device call:  command "bash benchmarks/scripts/bench_gpu.sh", carry [".upstream", ".upstream_dinov3", ".whl"], timeout_s 600
# Elsewhere: `OUT=somewhere UPSTREAM=/path/to/dinov2 UPSTREAM_DINOV3=/path/to/dinov3 bash benchmarks/scripts/bench_gpu.sh`.
# A subset (e.g. to split the work over two calls if one runs out of time): STEPS="3 4" bash benchmarks/scripts/bench_gpu.sh
# On the H100 (2026-11-26) steps 1-4 took 87 s and steps 5-7 200 s (compiling); both fit one call.
# Not run yet: steps 8-10 (DINOv3 ViT-L/16 and 7B/16) and 12-15 (issue 22). One device call for all of them:
#   command "STEPS='8 9 10 12 13 14 15' bash benchmarks/scripts/bench_gpu.sh", carry [".upstream", ".upstream_dinov3", ".whl"],
#   timeout_s 600. Each command is bounded by STEP_TIMEOUT seconds (default 90), so that a stuck one cannot
#   take the others' time. Estimated (not measured: no device was lent): 8-10 about 2.5 minutes, 12-15 about
#   5; if the call runs out, the steps not reached go to a second call (e.g. STEPS="14 15").
# Step multi (issue 27, multi-head, ViT-L/14) has not run yet either: alone it needs no upstream checkout,
#   STEPS="multi".
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
STEP_TIMEOUT=${STEP_TIMEOUT:-90}
mkdir -p "$OUT"
# The packages the image lacks (hydra, albumentations and theirs: benchmarks/scripts/device_wheels.sh), when carried.
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site || echo "FAILED: installing .whl/"
fi
up=()
if [ -f "$UPSTREAM/hubconf.py" ]; then up=(--upstream "$UPSTREAM"); else echo "no upstream checkout at $UPSTREAM: ours vs timm only"; fi
up3=()
if [ -f "$UPSTREAM_DINOV3/dinov3/hub/backbones.py" ]; then up3=(--upstream "$UPSTREAM_DINOV3")
else echo "no DINOv3 package at $UPSTREAM_DINOV3: DINOv3 steps ours alone"; fi
bench() {
  timeout "$STEP_TIMEOUT" "$PYTHON" -m benchmarks --device cuda --precision bf16 --iters 10 --warmup 3 "$@" \
    || echo "FAILED (exit $?): benchmarks $*"
}
STEPS=${STEPS:-1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 seg multi}
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
  step 11 && { "$PYTHON" -m benchmarks.onnx --backbone vitl14 --head depth_dpt --batch 16 --height 480 --width 640 \
    --tensorrt "$OUT/11_vitl14_dpt.onnx" || echo "FAILED (exit $?): benchmarks.onnx --tensorrt"; }
  # 12. Issue 22: train.py's loop (DenseDataModule with the default worker count, DepthTask, a Lightning Trainer,
  #     bf16-mixed) beside our training step, ViT-L/14 + DPT, 416x544, batch 8, synthetic scenes, eager; then the
  #     step alone with compile=true. Targets: loop >= 90% of the step; the step >= 180 img/s. Before: step 129
  #     eager / 159 compiled, train.py 12-17 img/s.
  step 12 && bench --backbone vitl14 --head depth_dpt --size 416x544 --batch 8 --work train,loop --reference none \
    --json "$OUT/12_vitl_dpt_loop.json"
  step 12 && bench --backbone vitl14 --head depth_dpt --size 416x544 --batch 8 --work train --reference none \
    --compile on --json "$OUT/12_vitl_dpt_train_compiled.json"
  # 13. ViT-g/14 + DPT: the loop beside the step at 224x224 (train.py's default size; before: 93 img/s through
  #     train.py), and the step at 416x544, eager and compiled (target >= 100 img/s; before 72 / 92).
  step 13 && bench --backbone vitg14 --head depth_dpt --size 224x224 --batch 8 --work train,loop --reference none \
    --json "$OUT/13_vitg_dpt_loop_224.json"
  step 13 && bench --backbone vitg14 --head depth_dpt --size 416x544 --batch 8 --work train --reference none \
    --compile off,on --json "$OUT/13_vitg_dpt_train_416.json"
  # 14. The loader on this machine's cores: samples/s per worker count, synthetic 416x544, NYU and ADE20K recipes.
  step 14 && { timeout "$STEP_TIMEOUT" "$PYTHON" -m benchmarks.loader --workers 0,1,4,15 --repeat 2 --batches 12 \
    --json "$OUT/14_loader.json" || echo "FAILED (exit $?): benchmarks.loader"; }
  # 15. Where the DPT step's time goes (ViT-L/14, 416x544, batch 8): backbone against head, and the head's x2
  #     upsample NCHW, channels-last and as two matrix products (a candidate the head does not use yet).
  step 15 && { timeout "$STEP_TIMEOUT" "$PYTHON" -m benchmarks.profile_dpt --backbone vitl14 --parts split,upsample,matrices \
    || echo "FAILED (exit $?): benchmarks.profile_dpt"; }
  # ---- seg (issue 26, seg_mask): segmentation img/s at 512², the unit EoMT and PMT publish ------------------
  # python -m benchmarks.segmentation: seg_linear, seg_ms and seg_mask (100 queries, 6 blocks) on every size,
  # batch 1, bf16 (backbone weights cast, autocast). (a) eager, DINOv3 S/B/L/H+/7B and DINOv2 S/B/L/g;
  # (b) compiled (DenseModel.compile), ViT-L/16: PMT-L reports 128 img/s on an H100 (torch.compile
  # max-autotune, model_zoo/image/dinov3.md). STEPS="seg" runs this block alone.
  step seg && { timeout "$STEP_TIMEOUT" "$PYTHON" -m benchmarks.segmentation --device cuda --precision bf16 --batch 1 --iters 20 --warmup 3 \
    --backbone vits16,vitb16,vitl16,vith16plus,vit7b16,vits14,vitb14,vitl14,vitg14 \
    --json "$OUT/seg_512_bf16.json" || echo "FAILED (exit $?): benchmarks.segmentation eager"; }
  step seg && { timeout "$STEP_TIMEOUT" "$PYTHON" -m benchmarks.segmentation --device cuda --precision bf16 --compile on --batch 1 --iters 20 \
    --warmup 3 --backbone vitl16 --json "$OUT/seg_512_bf16_compiled.json" \
    || echo "FAILED (exit $?): benchmarks.segmentation compiled"; }
  # ---- end of seg -------------------------------------------------------------------------------------------
  # multi. Issue 27: one backbone pass feeding depth_dpt + seg_linear (MultiHeadModel) against the two single-head
  #     models one after the other, ViT-L/14, batch 16, 480x640, bf16: inference and a training step (img/s, peak memory).
  step multi && { timeout "$STEP_TIMEOUT" "$PYTHON" -m benchmarks.multi --device cuda --precision bf16 --backbone vitl14 \
    --heads depth=depth_dpt,seg=seg_linear --size 480x640 --batch 16 --iters 10 --warmup 3 \
    --json "$OUT/multi_vitl14.json" || echo "FAILED (exit $?): benchmarks.multi"; }
  :  # a step left out is not a failure (each step's own errors are in the log)
} 2>&1 | tee "$OUT/log.txt"
