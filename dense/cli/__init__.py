"""What the entry scripts at the repository root (train.py, eval.py, predict.py, export.py) run: each script
is its usage docstring, its Hydra main and one call into this package.

- `runner`: one-line errors and exit codes, the command-line checks answered before torch is imported;
- `help`: `--help`, written from the configs; `imports`: the `imports=[...]` key;
- `train`, `evaluate`, `export`: what train.py, eval.py and export.py do;
- `predict/`: what predict.py does, by concern: `options` (option checks, device), `model` (the model
  from a checkpoint, the released heads' groups or an ONNX file), `outputs` (which files of the output
  folder predict.py owns, and the names of its results), `writers` (the result files), `run` (batches,
  inference, the out-of-memory retry, the loop over the images).

Importing this package imports nothing else: the scripts answer `--help` before torch is loaded.
"""
