"""What changes the model before conversion: the ONNX export, equalization and compression."""
