"""Speed and memory of the frozen-backbone pipeline, measured against reference implementations.

    python -m benchmarks --backbone vits14 --head depth_linear4 --size 224x224 --batch 4 \\
        --precision fp32,bf16 --compile off,on --device cpu --iters 10 --warmup 2 --json out.json

Every option takes a comma-separated list and the bench runs every combination (a "case"). Per case it
measures four kinds of work, and on request (--work ...,loop) a fifth:

    backbone  the frozen backbone's forward on the head's layers (get_intermediate_layers)
    head      the head and DenseModel.decode, on features computed once (inference)
    predict   DenseModel.predict(images), mode "whole": normalise, pad, backbone, head, clamp, resize
    train     one training step on a batch already on the device: ours is the task's own training_step
              (DepthTask / SegmentationTask: the model on uint8 images, SigLoss + GradientLoss or the
              segmentation loss, the NaN flag) with its optimiser and schedule; the references compute
              the same loss on their output
    loop      train.py's loop (benchmarks/loop.py): the real DenseDataModule (--data), the task and a
              Lightning Trainer for a few dozen steps; img/s beside the train work's, and where each
              step's time goes (loader wait, host checks, host→device copy, the step, the rest)

each by `ours` and by reference paths run in the same process on the same input and the same weights:

    timm        timm's VisionTransformer (forward_intermediates), as backbone; under our head for
                predict/train when the head has no naive variant
    naive       our backbone + upstream's data flow for the linear depth heads: every layer's (patch,
                class token) map upsampled 4× and concatenated before the 1×1 conv (NaiveLinearDepthHead)
    timm+naive  timm's backbone + the naive head: what timm plus upstream's head gives
    upstream    Meta's own code (the hub depthers) from a local checkout: --upstream DIR (depth heads,
                plain backbones); for DINOv3 backbones its hub backbone from a DINOv3 checkout
                as DIR (the backbone work only)

Headlines are ratios, ours ÷ reference: speed = ours img/s ÷ reference img/s (> 1: ours is faster),
memory = ours peak ÷ reference peak (< 1: ours needs less). "TFLOP/s" is the backbone's forward FLOPs
(`flops_per_image` of the padded size) × images/s, for every work that runs the backbone.

Timing: warm-up calls, then the paths of one work are timed round-robin (call i of every path, then
call i+1), each call ended by a device synchronisation. Speed is reported three ways: the median call
("img/s"), the fastest call ("best"), and "paired": the median over rounds of the ratio of the two
paths' calls in the same round. On an idle GPU the three should agree. On a CPU shared with other
jobs the load changes from second to second; calls of the same round ran seconds apart, so the paired
ratio is the steadiest there. Every call's time is in the JSON.

Memory, in a separate call after the timing: CUDA `max_memory_allocated` above what was allocated
before the call; CPU the growth of the resident set (VmHWM after resetting it through
/proc/self/clear_refs, from VmRSS after malloc_trim). The peak reported for a path is that growth plus
the bytes the path itself holds (its modules' parameters and buffers, its optimiser state): every path
of a case lives on the device at once, so the device-wide number would count the others' weights.

The room, beside the package (`benchmarks/` at the clone's root; not installed with dense: run it from
the root, where `python -m benchmarks` finds it): `cli` (options, the loop over cases; `python -m
benchmarks` runs it), `case` (what one case and one timed path are), `references` (the reference
implementations and how each is built), `paths` (the timed calls of one case, one function per work),
`measure` (timing, memory, one case's results), `report` (the machine and the tables), `loop` (the loop
work), `generated` (NYU and ADE20K files written in their formats for the loop and the loader). Beside
them, benches of single questions, each `python -m benchmarks.NAME --help`: `loader` (samples/s per
number of loader workers), `layout` (NCHW against channels-last), `profile_dpt` (where a DPT training
step spends its time), `segmentation`, `multi`, `onnx`. benchmarks/scripts/ holds what stays a script:
bench_cache.py and bench_predict_memory.py drive train.py or predict.py, which a module of the package
must not import (imports go one way: the entry scripts use the library, never the reverse);
checkpoint_sizes.py; bench_gpu.sh (and device_wheels.sh, the wheels it installs) runs the GPU
measurements. benchmarks/results/ holds the recorded runs, benchmarks/BENCHMARKS.md what they say.
"""

from benchmarks.cli import main, parse_args

__all__ = ["main", "parse_args"]
