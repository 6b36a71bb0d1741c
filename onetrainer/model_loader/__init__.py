"""Readers that turn base models, LoRAs and embeddings on disk (or on the hub) into in-memory objects."""
