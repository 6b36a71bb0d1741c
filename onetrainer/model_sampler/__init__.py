"""Image generation from an in-memory model: training previews and `onetrainer sample`."""
