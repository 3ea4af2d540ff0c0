"""The UI-to-API workflow converter the ComfyUI tests use (rules of the frontend's graphToPrompt)."""

import pytest

from comfyui.ui_to_api import convert

DEFS = {
    "Loader": {"required": {"name": (["a.pt", "b.pt"],)}},
    "Sampler": {"required": {"model": ("MODEL",), "seed": ("INT", {"default": 0}), "steps": ("INT", {"default": 20}),
                             "mode": (["strict", "relax"],)},
                "optional": {"note": ("STRING", {"default": "x"})}},
    "Filter": {"required": {"model": ("MODEL",), "amount": ("FLOAT", {"default": 0.5})}},
    "Save": {"required": {"model": ("MODEL",), "prefix": ("STRING", {"default": "out"})}},
}


def _node(node_id, kind, widgets, inputs=(), outputs=(), mode=0):
    return {"id": node_id, "type": kind, "mode": mode, "order": node_id, "widgets_values": widgets,
            "inputs": [{"name": n, "type": t, "link": l} for n, t, l in inputs],
            "outputs": [{"name": n, "type": t, "links": ls} for n, t, ls in outputs]}


def _graph(filter_mode=0, sampler_widgets=(7, "fixed", 30, "relax")):
    return {
        "nodes": [
            _node(1, "Loader", ["b.pt"], outputs=[("MODEL", "MODEL", [1])]),
            _node(2, "Filter", [0.25], inputs=[("model", "MODEL", 1)], outputs=[("MODEL", "MODEL", [2])], mode=filter_mode),
            _node(3, "Reroute", [], inputs=[("", "*", 2)], outputs=[("", "MODEL", [3])]),
            _node(4, "Sampler", list(sampler_widgets), inputs=[("model", "MODEL", 3)], outputs=[("MODEL", "MODEL", [4])]),
            _node(5, "Save", [], inputs=[("model", "MODEL", 4)]),
            _node(6, "Note", ["text"]),
        ],
        "links": [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 3, 0, "MODEL"], [3, 3, 0, 4, 0, "MODEL"], [4, 4, 0, 5, 0, "MODEL"]],
    }


def test_widgets_follow_input_order_and_skip_the_seed_control_value():
    prompt = convert(_graph(), DEFS)
    assert prompt["4"] == {"class_type": "Sampler", "inputs": {"seed": 7, "steps": 30, "mode": "relax", "note": "x", "model": ["2", 0]}}
    assert prompt["1"]["inputs"] == {"name": "b.pt"}
    assert prompt["5"]["inputs"] == {"prefix": "out", "model": ["4", 0]}  # missing widget values get the default
    assert set(prompt) == {"1", "2", "4", "5"}  # Reroute and Note are frontend-only


def test_legacy_boolean_control_value_is_skipped():
    assert convert(_graph(sampler_widgets=(7, True, 30, "relax")), DEFS)["4"]["inputs"]["steps"] == 30


@pytest.mark.parametrize("mode, expected", [(4, ["1", 0]), (2, None)], ids=["bypassed", "muted"])
def test_bypassed_nodes_pass_through_and_muted_nodes_cut_links(mode, expected):
    prompt = convert(_graph(filter_mode=mode), DEFS)
    assert "2" not in prompt
    assert prompt["4"]["inputs"].get("model") == expected


def test_unknown_node_type_names_the_node():
    graph = _graph()
    graph["nodes"][0]["type"] = "Missing"
    with pytest.raises(KeyError, match="node 1: unknown class_type 'Missing'"):
        convert(graph, DEFS)
