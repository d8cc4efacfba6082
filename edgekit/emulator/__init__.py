"""The rootless ARM64 emulator: its setup, the worker that runs inside it, and drift measured there."""
