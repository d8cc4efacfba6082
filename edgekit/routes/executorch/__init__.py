"""The ExecuTorch route: XNNPACK-delegated .pte programs quantized with PT2E."""
