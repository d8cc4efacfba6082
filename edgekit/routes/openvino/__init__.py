"""The OpenVINO route: OpenVINO IR quantized by NNCF, for Intel and ARM edge CPUs."""
