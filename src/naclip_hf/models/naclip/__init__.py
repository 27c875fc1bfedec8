"""NACLIP as a transformers model: configuration, model, processors and pipeline.

This folder is what a Hub checkpoint ships as remote code: its modules import only each other, torch,
transformers and their dependencies. Nothing is imported here, so that the torch-free parts (`options`,
`image_utils`, `labels`, ...) load without torch.
"""
