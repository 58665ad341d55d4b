"""The bottom layer: errors, constants, the name registry, feature maps, tensor ops, plain-data
checks, host memory and threads, weights files, the install check, mask predictions; and the io
sub-layer (io.py: reading images, writing files atomically; hashing.py: sha256 of files and tensors).
Nothing here imports another layer of dense."""
