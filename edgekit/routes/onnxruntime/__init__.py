"""The ONNX Runtime route: ONNX Runtime Mobile (.ort) on ARM64 phones and boards."""
