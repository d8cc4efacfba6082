"""The step cache: content-addressed entries and the keys that name them."""
