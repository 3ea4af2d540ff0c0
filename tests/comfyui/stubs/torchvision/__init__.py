"""Test-only torchvision stand-in: PyPI torchvision has no build for the pinned CPU torch.

It covers what ComfyUI (2024 and current trees) and spandrel touch when imported; nothing in
ComfyUI-FREE uses it. Put tests/comfyui/stubs on PYTHONPATH only for the ComfyUI test processes.
"""

__version__ = "0.0.0+free-tests-stub"

from . import models, transforms  # noqa: E402,F401
