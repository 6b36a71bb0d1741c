"""`inspect`: say what a path is and what is in it, reading headers rather than tensors.

`inspect_path` recognises model files and folders, LoRAs, embeddings, training backups and
workspaces, config files and image folders, and returns one `Inspection`: plain, JSON-ready data
that `ui/inspection.py` renders for people and `--json` prints for scripts. Recognising a file is the
job of `util/detect.py` (shared with `convert` and `sample`); this package only describes.
"""
