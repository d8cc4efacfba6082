"""How drift is measured: metrics, output tasks, the reference, per-layer drift and sensitivity."""
