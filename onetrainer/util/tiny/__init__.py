"""Tiny random-weight models, a tiny CLIP tokenizer and small image datasets, built fully offline.

Tests (and the offline demo) need models with the real module structure and key names of each
family but widths small enough to train on a CPU in milliseconds, and image folders that exercise
the data loader's edge cases. Everything here is deterministic by seed. Heavy libraries are imported
inside the builders, so importing this package costs nothing.
"""
