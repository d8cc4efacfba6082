"""The bundle: writing it, its lineage and reports, and reading it back (check, diff, inspect)."""
