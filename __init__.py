"""ComfyUI-FREE: put this folder in ComfyUI/custom_nodes/. ComfyUI reads the two mappings below."""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
