"""GCFSR in pure PyTorch (placeholder: being written)."""
