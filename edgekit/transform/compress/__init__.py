"""Compression: pruning, clustering and recovery on torch modules and ONNX initializers."""
