"""onetrainer: train diffusion models (LoRA, full fine-tune, embeddings) from the command line."""

__version__ = "0.1.0"
