"""Cross-layer equalization: torch and ONNX backends over one common core."""
