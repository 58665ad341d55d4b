"""The DINOv2 family: vit.py is its vision transformer (its specs are registered in dense/backbones/__init__.py)."""
