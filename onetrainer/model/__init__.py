"""In-memory models of each family: components, adapters, device and dtype placement."""
