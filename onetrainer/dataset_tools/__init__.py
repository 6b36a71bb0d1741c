"""Folder tools that prepare training data: captions (`name.txt`) and masks (`name-masklabel.png`).

Both tools walk a folder of images, decide per image whether there is work to do (the mode), run a
model over the images in batches, and write one sidecar file per image atomically. The shared parts
(walking, image decoding, batching, progress, the summary) live here once; each backend only turns a
batch of images into texts or masks.
"""
