"""Build matrices: many ordinary builds from one MATRIX.toml, on a local pool or on Ray."""
