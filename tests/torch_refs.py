"""PyTorch reference packages for parity tests, imported the one way that works here.

torchvision's PyPI wheel is a CUDA build: beside the CPU torch its compiled operators
(nms, roi_align, ...) do not load, and its `_meta_registrations` module then fails at import
with "operator torchvision::nms does not exist". The references used here (lpips' VGG16 /
AlexNet, pytorch-fid's InceptionV3) are plain convolution networks that never call those
operators, so torchvision is imported with that one module replaced by an empty one.
"""
import sys
import types


def stub_meta_registrations():
    """Makes a later torchvision import (transformers' CLIP and T5 modules import it) succeed;
    conftest.py calls this once for the whole suite. Imports nothing itself."""
    if "torchvision" not in sys.modules:
        sys.modules.setdefault("torchvision._meta_registrations",
                               types.ModuleType("torchvision._meta_registrations"))


def import_torchvision():
    """torchvision, importable beside the CPU torch (see the module docstring)."""
    stub_meta_registrations()
    import torchvision
    return torchvision
