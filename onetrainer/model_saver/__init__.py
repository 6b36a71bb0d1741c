"""Writers that put a `model/` object, or just its adapters, on disk in a chosen format."""
