"""StyleGAN2 in pure PyTorch (placeholder: being written)."""
