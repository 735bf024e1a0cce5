"""Export formats (``tl-export format=...``): one module per format, registered under its name.

A format writes a finished model into a folder that another tool opens (timm, transformers,
onnxruntime, safetensors) and checks it by loading it back; ``deploy/export.py`` is ``tl-export``: it
loads the model (``deploy.load``), refuses what the format cannot hold, and renames the folder into
place only once the check passed.
"""
from transferlab.registry import Registry

# hf_modeling is no entry: it is the code an hf folder ships (torch at its top)
FORMATS = Registry("format", "export format", package="transferlab.formats", support=("base", "hf_modeling"))

__all__ = ["FORMATS"]
