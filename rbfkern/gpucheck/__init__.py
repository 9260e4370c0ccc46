"""``python -m rbfkern gpucheck``: the prepared check of the package on a CUDA device (in progress)."""
