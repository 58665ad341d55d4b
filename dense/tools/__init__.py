"""Tools over the library: viz.py (depth colouring, palettes, overlays, figures) and export.py (ONNX)."""
