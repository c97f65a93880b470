"""Writes example_workflows/*.json (ComfyUI's UI workflow format) and their small .jpg thumbnails.

Run from the repository root when a template changes:  python tests/integration/build_examples.py
The checked-in files are the product; this script only keeps them consistent.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

OUT = Path(__file__).resolve().parents[2] / "example_workflows"
BASE = "v2-1_512-ema-pruned.safetensors"
WEIGHTS = "pisa_sr.pkl"
NOTE = ("### PiSA-SR\n\nPut the files here (see the pack's README):\n\n"
        f"- `models/checkpoints/{BASE}` (Stable Diffusion 2.1-base), or a diffusers folder in `models/diffusers/`\n"
        f"- `models/pisa_sr/{WEIGHTS}` (PiSA-SR weights from the authors' release)\n\n"
        "λ_pix removes degradation (higher = cleaner, too high = smooth); λ_sem adds detail "
        "(higher = richer, too high = artifacts). 1 / 1 is the paper's default.")

# node type -> (socket inputs [(name, type)], outputs [(name, type)])
SOCKETS = {
    "PiSALoader": ([], [("pisa_model", "PISA_MODEL")]),
    "PiSAEncode": ([("pisa_model", "PISA_MODEL"), ("image", "IMAGE")], [("latent", "LATENT")]),
    "PiSADualGuidance": ([("pisa_model", "PISA_MODEL"), ("latent", "LATENT"), ("mask", "MASK")],
                         [("latent", "LATENT")]),
    "PiSADecode": ([("pisa_model", "PISA_MODEL"), ("latent", "LATENT"), ("color_reference", "IMAGE")],
                   [("image", "IMAGE")]),
    "PiSAGuidanceGrid": ([("pisa_model", "PISA_MODEL"), ("latent", "LATENT"), ("color_reference", "IMAGE")],
                         [("sheet", "IMAGE"), ("images", "IMAGE")]),
    "LoadImage": ([], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "SaveImage": ([("images", "IMAGE")], []),
    "PreviewImage": ([("images", "IMAGE")], []),
    "ImageScaleBy": ([("image", "IMAGE")], [("IMAGE", "IMAGE")]),
    "ImageStitch": ([("image1", "IMAGE"), ("image2", "IMAGE")], [("IMAGE", "IMAGE")]),
    "MarkdownNote": ([], []),
}


class Graph:
    def __init__(self):
        self.nodes, self.links = [], []

    def node(self, type_, pos, size, widgets, title=None):
        inputs, outputs = SOCKETS[type_]
        node = {
            "id": len(self.nodes) + 1, "type": type_, "pos": list(pos), "size": list(size), "flags": {},
            "order": len(self.nodes), "mode": 0,
            "inputs": [{"name": n, "type": t, "link": None} for n, t in inputs],
            "outputs": [{"name": n, "type": t, "slot_index": i, "links": []} for i, (n, t) in enumerate(outputs)],
            "properties": {} if type_ == "MarkdownNote" else {"Node name for S&R": type_},
            "widgets_values": list(widgets),
        }
        if type_ == "MarkdownNote":
            node.update(color="#432", bgcolor="#653")
        if title:
            node["title"] = title
        self.nodes.append(node)
        return node

    def link(self, src, out_slot, dst, in_name):
        slot = [i["name"] for i in dst["inputs"]].index(in_name)
        link_id = len(self.links) + 1
        type_ = src["outputs"][out_slot]["type"]
        self.links.append([link_id, src["id"], out_slot, dst["id"], slot, type_])
        src["outputs"][out_slot]["links"].append(link_id)
        dst["inputs"][slot]["link"] = link_id

    def workflow(self):
        for n in self.nodes:
            for o in n["outputs"]:
                if not o["links"]:
                    o["links"] = None
        return {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, "pisa-sr/" + "/".join(n["type"] for n in self.nodes))),
            "revision": 0, "last_node_id": len(self.nodes), "last_link_id": len(self.links),
            "nodes": self.nodes, "links": self.links, "groups": [], "config": {},
            "extra": {"ds": {"scale": 0.8, "offset": [40, 60]}}, "version": 0.4,
        }


def _front(g: Graph):
    note = g.node("MarkdownNote", (0, -260), (400, 220), [NOTE])
    loader = g.node("PiSALoader", (0, 0), (400, 110), [BASE, WEIGHTS, "auto", False])
    load = g.node("LoadImage", (0, 170), (400, 330), ["example.png", "image"])
    enc = g.node("PiSAEncode", (450, 100), (320, 150), [4.0, "bicubic", 0, 512])
    g.link(loader, 0, enc, "pisa_model")
    g.link(load, 0, enc, "image")
    return note, loader, load, enc


def _chain(guide_widgets, save_prefix, title=None, mask=False) -> dict:
    """Load Image → Encode → Dual Guidance → Decode (LQ as colour reference) → Save Image."""
    g = Graph()
    _, loader, load, enc = _front(g)
    if mask:
        g.node("MarkdownNote", (450, -260), (400, 220), [REGIONS_NOTE])
    guide = g.node("PiSADualGuidance", (820, 100), (320, 210), guide_widgets, title)
    dec = g.node("PiSADecode", (1190, 100), (300, 120), ["adain", 0])
    save = g.node("SaveImage", (1540, 100), (500, 560), [save_prefix])
    g.link(loader, 0, guide, "pisa_model")
    g.link(enc, 0, guide, "latent")
    if mask:
        g.link(load, 1, guide, "mask")
    g.link(loader, 0, dec, "pisa_model")
    g.link(guide, 0, dec, "latent")
    g.link(load, 0, dec, "color_reference")
    g.link(dec, 0, save, "images")
    return g.workflow()


def basic() -> dict:
    return _chain([1.0, 1.0, 96, 32, 1.0, 0.3], "PiSA-SR")


def adjustable() -> dict:
    g = Graph()
    _, loader, load, enc = _front(g)
    guide = g.node("PiSADualGuidance", (820, 100), (320, 210), [0.8, 1.2, 96, 32, 1.0, 0.3],
                   "λ sliders: PiSA-SR Dual Guidance")
    dec = g.node("PiSADecode", (1190, 100), (300, 120), ["adain", 0])
    bicubic = g.node("ImageScaleBy", (820, 420), (320, 90), ["bicubic", 4.0], "Plain bicubic ×4 (for comparison)")
    stitch = g.node("ImageStitch", (1190, 420), (300, 150), ["right", True, 8, "white"])
    save = g.node("SaveImage", (1540, 100), (700, 480), ["PiSA-SR_vs_bicubic"])
    g.link(loader, 0, guide, "pisa_model")
    g.link(enc, 0, guide, "latent")
    g.link(loader, 0, dec, "pisa_model")
    g.link(guide, 0, dec, "latent")
    g.link(load, 0, dec, "color_reference")
    g.link(load, 0, bicubic, "image")
    g.link(bicubic, 0, stitch, "image1")
    g.link(dec, 0, stitch, "image2")
    g.link(stitch, 0, save, "images")
    return g.workflow()


def grid() -> dict:
    g = Graph()
    _, loader, load, enc = _front(g)
    grid_node = g.node("PiSAGuidanceGrid", (820, 100), (340, 260),
                       ["0.5, 1.0, 1.5", "0.0, 0.5, 1.0, 1.5", "adain", 512, 96, 32, 0])
    save = g.node("SaveImage", (1210, 100), (600, 600), ["PiSA-SR_grid"])
    preview = g.node("PreviewImage", (1210, 740), (600, 400), [])
    g.link(loader, 0, grid_node, "pisa_model")
    g.link(enc, 0, grid_node, "latent")
    g.link(load, 0, grid_node, "color_reference")
    g.link(grid_node, 0, save, "images")
    g.link(grid_node, 1, preview, "images")
    return g.workflow()


REGIONS_NOTE = ("### PiSA-SR: regions\n\nRight-click **Load Image** → *Open in MaskEditor* and paint over what must "
                "stay faithful (a face, text, a logo). Inside the mask PiSA-SR uses λ_sem 0.3 (little invented "
                "detail), outside λ_sem 1.3 (more detail). Moving the sliders or repainting runs no UNet pass: "
                "both ε are cached.")


def regions() -> dict:
    return _chain([1.0, 1.3, 96, 32, 1.0, 0.3], "PiSA-SR_regions", "Regions: λ_sem 0.3 in the mask, 1.3 elsewhere",
                  mask=True)


def thumbnail(workflow: dict, path: Path, size=(320, 180)) -> None:
    """A small schematic of the graph: one box per node at its position, links as lines."""
    nodes = {n["id"]: n for n in workflow["nodes"] if n["type"] != "MarkdownNote"}
    xs = [n["pos"][0] for n in nodes.values()] + [n["pos"][0] + n["size"][0] for n in nodes.values()]
    ys = [n["pos"][1] for n in nodes.values()] + [n["pos"][1] + n["size"][1] for n in nodes.values()]
    pad = 10
    scale = min((size[0] - 2 * pad) / (max(xs) - min(xs)), (size[1] - 2 * pad) / (max(ys) - min(ys)))

    def at(x, y):
        return pad + (x - min(xs)) * scale, pad + (y - min(ys)) * scale

    img = Image.new("RGB", size, (32, 33, 36))
    draw = ImageDraw.Draw(img)
    for _, src, _, dst, _, _ in workflow["links"]:
        a, b = nodes[src], nodes[dst]
        draw.line([at(a["pos"][0] + a["size"][0], a["pos"][1] + 20), at(b["pos"][0], b["pos"][1] + 20)],
                  fill=(120, 170, 230), width=2)
    font = ImageFont.load_default()
    for n in nodes.values():
        x0, y0 = at(*n["pos"])
        x1, y1 = at(n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
        pisa = n["type"].startswith("PiSA")
        draw.rectangle([x0, y0, x1, y1], fill=(70, 52, 110) if pisa else (58, 60, 66), outline=(200, 200, 200))
        label = n["type"].replace("PiSA", "") if pisa else n["type"]
        draw.text((x0 + 2, y0 + 2), label[: max(3, int((x1 - x0) / 6))], fill=(240, 240, 240), font=font)
    img.save(path, quality=85)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, make in (("pisa_sr_basic", basic), ("pisa_sr_adjustable", adjustable), ("pisa_sr_grid", grid),
                       ("pisa_sr_regions", regions)):
        workflow = make()
        (OUT / f"{name}.json").write_text(json.dumps(workflow, indent=1, ensure_ascii=False) + "\n")
        thumbnail(workflow, OUT / f"{name}.jpg")


if __name__ == "__main__":
    main()
