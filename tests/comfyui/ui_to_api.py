"""Convert a ComfyUI workflow in UI format ({"nodes": [...], "links": [...]}, what "Save" writes and what
drag and drop reads) to API format ({id: {"class_type", "inputs"}}, what POST /prompt and the executor take).

Node definitions come from `nodes.NODE_CLASS_MAPPINGS` in process (`node_defs_from_mappings`) or from a
server's GET /object_info (`node_defs_from_object_info`). The rules follow the frontend's graphToPrompt:

* widgets are the required then optional inputs whose type is a combo list, "COMBO" or INT/FLOAT/STRING/BOOLEAN;
  `widgets_values` holds one value per widget in that order;
* a seed-like INT (named seed / noise_seed, or with control_after_generate) is followed by its
  "control after generate" value, and an upload combo by its button value: both are skipped;
* forceInput inputs had a hidden widget slot in the 2024 frontend and none in 1.x: whichever layout
  matches the number of saved values is used;
* a linked input becomes [origin id, origin slot]; Reroutes are followed; bypassed nodes (mode 4) pass
  the input of the same type through; muted nodes (mode 2) and frontend-only nodes are dropped;
* widgets with no saved value get their INPUT_TYPES default.
Group nodes and subgraphs are not supported.
"""

from __future__ import annotations

import json
import sys

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
FRONTEND_ONLY = {"Reroute", "PrimitiveNode", "Note", "MarkdownNote"}
UPLOAD_OPTIONS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload")
MUTED, BYPASSED = 2, 4


def node_defs_from_mappings(mappings: dict) -> dict:
    return {name: cls.INPUT_TYPES() for name, cls in mappings.items()}


def node_defs_from_object_info(info: dict) -> dict:
    return {name: entry.get("input", {}) for name, entry in info.items()}


def _options(spec) -> dict:
    return spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}


def _kind(spec):
    return spec[0] if isinstance(spec, (list, tuple)) and spec else spec


def _is_widget(spec) -> bool:
    kind = _kind(spec)
    return isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES


def _slots(name: str, spec, force_input_has_slot: bool) -> list[tuple[str, str]]:
    """The widgets_values slots of one input: ("value", name), then ("control" | "upload", name) extras."""
    if not _is_widget(spec):
        return []
    options, kind = _options(spec), _kind(spec)
    if options.get("forceInput") and not force_input_has_slot:
        return []
    slots = [("value", name)]
    combo = isinstance(kind, (list, tuple)) or kind == "COMBO"
    if (kind == "INT" and (name in ("seed", "noise_seed") or options.get("control_after_generate"))) or (
        combo and options.get("control_after_generate")
    ):
        slots.append(("control", name))
    if any(options.get(flag) for flag in UPLOAD_OPTIONS):
        slots.append(("upload", name))
    return slots


def _default(spec):
    kind, options = _kind(spec), _options(spec)
    if "default" in options:
        return options["default"]
    if isinstance(kind, (list, tuple)):
        return kind[0] if kind else None
    if kind == "COMBO":
        return (options.get("options") or [None])[0]
    return {"INT": options.get("min", 0), "FLOAT": options.get("min", 0.0), "STRING": "", "BOOLEAN": False}.get(kind)


def widget_inputs(input_types: dict, values) -> dict:
    """Widget name -> value for one node from its saved `widgets_values`."""
    specs = {**(input_types.get("required") or {}), **(input_types.get("optional") or {})}
    if isinstance(values, dict):
        return {k: v for k, v in values.items() if k in specs and _is_widget(specs[k])}
    values = list(values or [])
    best = None
    for force_input_has_slot in (False, True):
        slots = [slot for name, spec in specs.items() for slot in _slots(name, spec, force_input_has_slot)]
        out, position = {}, 0
        for k, (kind, name) in enumerate(slots):
            if position >= len(values):
                break
            value = values[position]
            values_left, value_slots_left = len(values) - position, sum(1 for s, _ in slots[k + 1:] if s == "value")
            if kind == "value":
                out[name] = value
                position += 1
            elif kind == "control":
                following = next((specs[n] for s, n in slots[k + 1:] if s == "value"), None)
                legacy_flag = isinstance(value, bool) and (  # old files saved the control as a boolean (true = randomize)
                    values_left > value_slots_left or following is None or _kind(following) != "BOOLEAN")
                if (isinstance(value, str) and value in CONTROL_VALUES) or legacy_flag:
                    position += 1
            elif values_left > value_slots_left:  # upload button value
                position += 1
        for name, spec in specs.items():
            if name not in out and any(kind == "value" for kind, _ in _slots(name, spec, force_input_has_slot)):
                out[name] = _default(spec)
        exact = position == len(values)
        if best is None or (exact and not best[1]):
            best = (out, exact)
        if exact:
            break
    return best[0]


def convert(workflow: dict, node_defs: dict) -> dict:
    """The API-format prompt of a UI-format workflow."""
    if workflow.get("definitions", {}).get("subgraphs"):
        raise ValueError("workflows with subgraphs are not supported by this converter")
    nodes = {node["id"]: node for node in workflow["nodes"]}
    links = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):
            links[link["id"]] = (link["origin_id"], link["origin_slot"], link.get("type"))
        else:
            links[link[0]] = (link[1], link[2], link[5] if len(link) > 5 else None)

    def source(link_id):
        """[origin id, slot] of the real node behind a link (through Reroutes and bypassed nodes), or None."""
        seen = set()
        while link_id in links and link_id not in seen:
            seen.add(link_id)
            origin, slot, link_type = links[link_id]
            node = nodes.get(origin)
            if node is None:
                return None
            if node["type"] == "Reroute":
                link_id = (node.get("inputs") or [{}])[0].get("link")
                continue
            if node.get("mode") == BYPASSED:
                outputs = node.get("outputs") or []
                wanted = outputs[slot].get("type", link_type) if slot < len(outputs) else link_type
                through = [i.get("link") for i in node.get("inputs") or [] if i.get("type") == wanted and i.get("link") is not None]
                if not through:
                    return None
                link_id = through[0]
                continue
            if node.get("mode") == MUTED or node["type"] in FRONTEND_ONLY:
                return None
            return [str(origin), slot]
        return None

    prompt = {}
    for node in sorted(workflow["nodes"], key=lambda n: n.get("order", 0)):
        if node["type"] in FRONTEND_ONLY or node.get("mode") in (MUTED, BYPASSED):
            continue
        if node["type"] not in node_defs:
            raise KeyError(f"node {node['id']}: unknown class_type {node['type']!r} (is its node pack loaded?)")
        inputs = widget_inputs(node_defs[node["type"]], node.get("widgets_values", []))
        for entry in node.get("inputs") or []:
            link_id = entry.get("link")
            if link_id is None:
                continue
            origin = nodes.get(links.get(link_id, (None,))[0])
            if origin is not None and origin["type"] == "PrimitiveNode":
                continue  # a primitive's value is already in this node's widgets_values
            linked = source(link_id)
            if linked is not None:
                inputs[entry["name"]] = linked
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
        if node.get("title"):
            prompt[str(node["id"])]["_meta"] = {"title": node["title"]}
    for entry in prompt.values():  # links to dropped nodes disappear, as in the frontend
        for name, value in list(entry["inputs"].items()):
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int) \
                    and value[0] not in prompt:
                del entry["inputs"][name]
    return prompt


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="UI-format ComfyUI workflow to API format")
    parser.add_argument("workflow")
    parser.add_argument("--object-info", required=True, help="JSON saved from a server's GET /object_info")
    args = parser.parse_args()
    with open(args.workflow) as handle, open(args.object_info) as info:
        json.dump(convert(json.load(handle), node_defs_from_object_info(json.load(info))), sys.stdout, indent=2)
