"""Import torchvision (and so timm) with a CPU torch.

The PyPI torchvision wheel is a CUDA build; paired with a CPU torch its import fails with
"operator torchvision::nms does not exist" because its meta registrations refer to ops whose C++
schemas did not load. Defining the two schemas first lets the import succeed. Where torchvision
imports normally this module does nothing.
"""

from __future__ import annotations

import sys

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # keep the torch.library.Library alive, or its definitions are dropped


def ensure_torchvision() -> None:
    """Make ``import torchvision`` (and ``import timm``) work; idempotent."""
    global _library
    try:
        import torchvision  # noqa: F401

        return
    except RuntimeError as exc:
        if "torchvision::" not in str(exc) or _library is not None:
            raise
    # Drop the half-imported package before retrying.
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    import torch

    _library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS.values():
        _library.define(schema)
    import torchvision  # noqa: F401,F811
