"""Text shown on a node in the ComfyUI canvas while and after it runs (the frontend's progress text)."""

from __future__ import annotations

import logging


def show_on_node(node_id: str | None, text: str) -> None:
    """Sends `text` to the node's canvas preview; ComfyUI before progress text (2025) has no such channel."""
    if node_id is None:
        return
    try:
        from server import PromptServer
    except ImportError:  # ComfyUI imported as a library without its server
        return
    send = getattr(getattr(PromptServer, "instance", None), "send_progress_text", None)
    if send is None:
        return
    try:
        send(text, node_id)
    except Exception:  # the canvas text is a courtesy: a closed socket must not fail the run
        logging.debug("FREE: could not show text on node %s", node_id, exc_info=True)
