"""The DINOv2 family: vit.py is its vision transformer, specs.py its registered variants."""
