"""The LiteRT route: TFLite for Android through onnx2tf or litert-torch, quantized by edgekit."""
