"""Make `import torchvision` work next to a CPU-only torch.

The torchvision wheels on PyPI are CUDA builds; their compiled ops library links CUDA libraries that
a CPU torch lacks, so the library fails to load and torchvision's meta registrations then die with
"operator torchvision::nms does not exist". Declaring the two schemas that those registrations look
up lets the pure-Python parts (model definitions, transforms, box ops with Python fallbacks) import.
Compiled ops such as `torchvision.ops.nms` still raise; this project does not use them.

When torchvision's ops load normally (a matching build, e.g. on a CUDA machine) this does nothing.
Call `install_torchvision_shim()` before torchvision is first imported: each entry point does (the CLI's
`main`, the review app, Ray workers, the test suite's conftest), and so do the two places in core that import
torchvision, so library use needs nothing extra. Importing this module changes nothing.
"""
from __future__ import annotations

import importlib.util
import sys

import torch

_LIBRARY = None  # keeps the schema library alive for the life of the process


def _torchvision_ops_load() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # no torchvision: nothing to patch
    import glob
    import os

    for location in spec.submodule_search_locations:
        for lib in glob.glob(os.path.join(location, "_C*.so")):
            try:
                torch.ops.load_library(lib)
                return True
            except OSError:
                return False
    return False


def install_torchvision_shim() -> None:
    """Declare torchvision's op schemas if its compiled ops cannot load (idempotent)."""
    global _LIBRARY
    if _LIBRARY is not None or "torchvision" in sys.modules:
        return
    if hasattr(torch.ops, "torchvision") and hasattr(torch.ops.torchvision, "nms"):
        return
    if _torchvision_ops_load():
        return
    _LIBRARY = torch.library.Library("torchvision", "DEF")
    _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
