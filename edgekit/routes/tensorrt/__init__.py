"""The TensorRT route: Q/DQ ONNX (INT8) or float ONNX (FP16) plus on-device engine build scripts."""
