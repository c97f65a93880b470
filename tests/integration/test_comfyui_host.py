"""The node pack on the real ComfyUI server, over its HTTP API, with tiny models.

Runs only when COMFYUI_DIR points at a ComfyUI checkout; run pytest with a Python that has
ComfyUI's requirements (e.g. `COMFYUI_DIR=~/ComfyUI ~/comfy-venv/bin/python -m pytest
tests/integration`). COMFYUI_PYTHON may name another interpreter for the server. The suite runs
on whichever host COMFYUI_DIR names (tested: 0.3.64 and 0.33.0, one run each); the few checks
that concern one host only skip on the other. COMFYUI_FRONTEND_ROOT (a frontend's static folder,
as `--front-end-root` takes it) adds the browser checks with that frontend to the bundled one's.
The pack is symlinked into a temporary base directory's custom_nodes/ under a lower-case folder
name (as a registry install would name it); the models are placed via extra_model_paths.yaml.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

COMFYUI_DIR = os.environ.get("COMFYUI_DIR", "")
ROOT = Path(__file__).resolve().parents[2]
PACK_FOLDER = "comfyui-pisa-sr"
NODE_IDS = ["PiSALoader", "PiSAEncode", "PiSADualGuidance", "PiSADecode", "PiSAUpscale", "PiSAGuidanceGrid"]
TEMPLATES = ["pisa_sr_basic", "pisa_sr_adjustable", "pisa_sr_grid", "pisa_sr_regions"]
DECODER, BAD_DECODER = "sd21_lwdecoder.pth", "lying.pth"  # fast decoder files in models/pisa_sr
BASE_DECODER = "base VAE"  # the loader's default decoder choice
LQ_SIZE = (24, 32)  # h, w of the test input image
HTTP_TIMEOUT = 120  # s; a shared CI machine under load answers slowly

FRONTEND_ROOT = os.environ.get("COMFYUI_FRONTEND_ROOT", "")

pytestmark = pytest.mark.skipif(
    not (COMFYUI_DIR and (Path(COMFYUI_DIR) / "main.py").is_file()),
    reason="real-host tests need COMFYUI_DIR set to a ComfyUI checkout (with its requirements installed)")


def host_version() -> tuple[int, ...]:
    """The version of the ComfyUI at COMFYUI_DIR (its comfyui_version.py), e.g. (0, 33, 0)."""
    text = (Path(COMFYUI_DIR) / "comfyui_version.py").read_text()
    return tuple(int(n) for n in re.search(r'__version__ = "([0-9.]+)"', text).group(1).split("."))


def needs_host(minimum: tuple[int, ...] | None = None, below: tuple[int, ...] | None = None):
    """Skip a check that concerns other ComfyUI versions, saying which host it needs."""
    wanted = " and ".join(filter(None, [minimum and f">= {'.'.join(map(str, minimum))}",
                                        below and f"< {'.'.join(map(str, below))}"]))
    version = host_version() if COMFYUI_DIR and (Path(COMFYUI_DIR) / "comfyui_version.py").is_file() else None
    fits = version is not None and (minimum is None or version >= minimum) and (below is None or version < below)
    have = "none" if version is None else ".".join(map(str, version))
    return pytest.mark.skipif(not fits, reason=f"a check for ComfyUI {wanted}; COMFYUI_DIR is {have}")


# ------------------------------------------------------------------ server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str, base: Path, process: subprocess.Popen, log: Path):
        self.url, self.base, self.process, self.log = url, base, process, log

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=HTTP_TIMEOUT) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict | None = None):
        data = json.dumps(body or {}).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as r:
                text = r.read()
        except urllib.error.HTTPError as error:
            raise AssertionError(f"POST {path} -> {error.code}: {error.read().decode()[:2000]}") from None
        return json.loads(text) if text.strip() else {}

    def queue(self, prompt: dict) -> str:
        return self.post("/prompt", {"prompt": prompt, "client_id": "pisa-sr-tests"})["prompt_id"]

    def rejected(self, prompt: dict) -> dict:
        """The answer to a prompt that validation refuses (HTTP 400) before any node runs."""
        data = json.dumps({"prompt": prompt, "client_id": "pisa-sr-tests"}).encode()
        request = urllib.request.Request(self.url + "/prompt", data=data, headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=HTTP_TIMEOUT).close()
        assert info.value.code == 400
        return json.loads(info.value.read())

    def wait(self, prompt_id: str, timeout: float = 600) -> dict:
        end = time.time() + timeout
        while time.time() < end:
            history = self.get(f"/history/{prompt_id}")
            status = history.get(prompt_id, {}).get("status", {})
            if status.get("completed") is not None and status.get("status_str") in ("success", "error"):
                return history[prompt_id]
            assert self.process.poll() is None, "the ComfyUI server died:\n" + self.log.read_text()[-4000:]
            time.sleep(0.3)
        raise AssertionError(f"prompt {prompt_id} did not finish in {timeout}s")

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status")
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


def write_decoders(folder: Path) -> None:
    """A tiny fast decoder in the published layout, and one whose config contradicts its tensors
    (listed by its content, refused when read)."""
    from decoder_files import published_config, published_decoder, write_published

    model = published_decoder(seed=3)
    write_published(folder / DECODER, model)
    write_published(folder / BAD_DECODER, model, {**published_config(), "block_out_channels": [8, 8, 8, 8]})


def start_server(model_dir, tmp_path_factory, *extra_args: str):
    from PIL import Image

    base = tmp_path_factory.mktemp("comfy_base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACK_FOLDER).symlink_to(ROOT, target_is_directory=True)
    models = tmp_path_factory.mktemp("elsewhere_models")
    for folder in ("checkpoints", "diffusers", "pisa_sr"):
        (models / folder).mkdir()
    (models / "checkpoints" / "v2-1_512-ema-pruned.safetensors").symlink_to(model_dir / "sd21-tiny.safetensors")
    (models / "diffusers" / "sd21-tiny").symlink_to(model_dir / "sd21-tiny", target_is_directory=True)
    (models / "pisa_sr" / "pisa_sr.pkl").symlink_to(model_dir / "pisa_sr.pkl")
    write_decoders(models / "pisa_sr")
    config = base / "extra_model_paths.yaml"
    config.write_text(f"pisa_tests:\n    base_path: {models}\n    checkpoints: checkpoints\n"
                      f"    diffusers: diffusers\n    pisa_sr: pisa_sr\n")
    (base / "input").mkdir()
    h, w = LQ_SIZE
    gradient = Image.linear_gradient("L").resize((w, h)).convert("RGB")
    gradient.save(base / "input" / "lq.png")
    gradient.resize((64, 64)).save(base / "input" / "big.png")
    gradient.save(base / "input" / "example.png")

    port = _free_port()
    log = base / "server.log"
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    cmd = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory", str(base),
           "--extra-model-paths-config", str(config), *extra_args]
    with open(log, "w") as out:
        process = subprocess.Popen(cmd, cwd=COMFYUI_DIR, stdout=out, stderr=subprocess.STDOUT)
    srv = Server(f"http://127.0.0.1:{port}", base, process, log)
    try:
        end = time.time() + 240
        while True:
            assert process.poll() is None, "ComfyUI did not start:\n" + log.read_text()[-4000:]
            try:
                srv.get("/object_info/PiSALoader")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                assert time.time() < end, "ComfyUI did not answer in 240 s:\n" + log.read_text()[-4000:]
                time.sleep(1)
        yield srv
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    yield from start_server(model_dir, tmp_path_factory)


@pytest.fixture(scope="module", params=["bundled", "newest"])
def frontend_server(request, server, model_dir, tmp_path_factory):
    """The server with its bundled frontend, and one with COMFYUI_FRONTEND_ROOT's (the newest)."""
    if request.param == "bundled":
        yield server
    elif not FRONTEND_ROOT:
        pytest.skip("set COMFYUI_FRONTEND_ROOT to a frontend's static folder for the newest frontend's checks")
    else:
        yield from start_server(model_dir, tmp_path_factory, "--front-end-root", FRONTEND_ROOT)


# ------------------------------------------------------------------ prompts


def api_prompt(lq="lq.png", upscale=4.0, lp=1.0, ls=1.0, tile=96, overlap=32, process_size=0, base="[diffusers] sd21-tiny",
               prefix="pisa_test", decoder=None):
    loader = {"base_model": base, "pisa_weights": "pisa_sr.pkl", "dtype": "auto",
              **({"decoder": decoder} if decoder else {})}  # without it: the default, as older prompts
    return {
        "1": {"class_type": "PiSALoader", "inputs": loader},
        "2": {"class_type": "LoadImage", "inputs": {"image": lq}},
        "3": {"class_type": "PiSAEncode", "inputs": {"pisa_model": ["1", 0], "image": ["2", 0], "upscale_by": upscale,
                                                     "resampling": "bicubic", "vae_tile": 1024, "process_size": process_size}},
        "4": {"class_type": "PiSADualGuidance", "inputs": {"pisa_model": ["1", 0], "latent": ["3", 0], "lambda_pix": lp,
                                                           "lambda_sem": ls, "latent_tile": tile, "latent_overlap": overlap}},
        "5": {"class_type": "PiSADecode", "inputs": {"pisa_model": ["1", 0], "latent": ["4", 0], "color_fix": "adain",
                                                     "vae_tile": 1024, "color_reference": ["2", 0]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": prefix}},
    }


def saved_images(server: Server, entry: dict) -> list[Path]:
    files = []
    for output in entry["outputs"].values():
        for image in output.get("images", []):
            if image.get("type") == "output":
                files.append(server.base / "output" / image.get("subfolder", "") / image["filename"])
    return files


def choices(spec: tuple) -> list:
    """A combo input's choices in /object_info: V3 nodes give ("COMBO", {"options": [...]}), V1 ones a list."""
    return spec[1]["options"] if spec[0] == "COMBO" else spec[0]


def widget_names(spec: dict) -> list[str]:
    """Inputs that the frontend shows as widgets (and saves in widgets_values), in order."""
    names = []
    for section in ("required", "optional"):
        for name in spec["input_order"].get(section, []):
            kind = spec["input"][section][name][0]
            if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                names.append(name)
    return names


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """The frontend's 'queue prompt' conversion, for plain graphs (no groups, reroutes or seeds)."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] not in object_info:
            assert node["type"] in ("MarkdownNote", "Note"), f"unknown node type {node['type']}"
            continue
        spec = object_info[node["type"]]
        inputs = dict(zip(widget_names(spec), node["widgets_values"]))
        for socket_ in node["inputs"]:
            if socket_.get("link") is not None:
                _, origin, slot, _, _, _ = links[socket_["link"]]
                inputs[socket_["name"]] = [str(origin), slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


# ------------------------------------------------------------------ tests


def test_object_info_lists_the_nodes_and_model_files(server):
    info = server.get("/object_info")
    for node_id in NODE_IDS:
        assert node_id in info, f"{node_id} missing from /object_info"
        assert info[node_id]["category"] == "image/upscaling/PiSA-SR"
        assert info[node_id]["description"]
    loader = info["PiSALoader"]["input"]["required"]
    assert "v2-1_512-ema-pruned.safetensors" in choices(loader["base_model"])
    assert "[diffusers] sd21-tiny" in choices(loader["base_model"])
    assert choices(loader["pisa_weights"]) == ["pisa_sr.pkl"]  # the decoder files are not weights
    log = server.log.read_text()
    assert "IMPORT FAILED" not in log.split(PACK_FOLDER)[0][-200:]
    assert "Error while calling comfy_entrypoint" not in log and "pisa-sr: this ComfyUI" not in log
    assert f"custom_nodes/{PACK_FOLDER}" in log or PACK_FOLDER in log


def test_the_loaders_decoder_input_is_served_last_with_the_base_vae_by_default(server):
    spec = server.get("/object_info")["PiSALoader"]
    assert spec["input_order"]["optional"][-1] == "decoder"
    decoder = spec["input"]["optional"]["decoder"]
    assert choices(decoder) == [BASE_DECODER, BAD_DECODER, DECODER] and decoder[1]["default"] == BASE_DECODER
    assert "not measured on PiSA-SR outputs" in decoder[1]["tooltip"]


def test_a_chain_with_the_fast_decoder_and_a_clear_error_for_a_bad_one(server):
    from PIL import Image

    runs = {}
    for decoder in (None, DECODER):
        entry = server.wait(server.queue(api_prompt(upscale=2.0, decoder=decoder, prefix=f"decoder_{decoder}")))
        assert entry["status"]["status_str"] == "success", entry["status"]
        runs[decoder] = Image.open(saved_images(server, entry)[0])
    h, w = LQ_SIZE
    assert runs[DECODER].size == runs[None].size == (2 * w, 2 * h)
    assert runs[DECODER].tobytes() != runs[None].tobytes()  # the model carries the decoder to PiSA Decode
    entry = server.wait(server.queue(api_prompt(decoder=BAD_DECODER, prefix="bad_decoder")))
    assert entry["status"]["status_str"] == "error"
    error = next(m[1] for m in entry["status"]["messages"] if m[0] == "execution_error")
    assert error["node_type"] == "PiSALoader" and error["exception_type"].endswith("PiSAError"), error
    assert BAD_DECODER in error["exception_message"] and "\n" not in error["exception_message"].strip(), error


def test_the_hosts_v1_view_of_the_v3_nodes_is_the_frozen_schema(server):
    """What saved workflows rely on, as the real host serves it: ids, inputs in order with types,
    defaults and choices, the required/optional split and the outputs (tests/test_nodes_schema.json)."""
    from test_nodes import SNAPSHOT, schema_of

    info = server.get("/object_info")
    frozen = json.loads(SNAPSHOT.read_text())
    for node_id, old in frozen.items():
        now = schema_of(info[node_id])
        assert now["required"] == old["required"], node_id
        assert now["optional"][:len(old["optional"])] == old["optional"], node_id
        assert now["outputs"] == old["outputs"] and info[node_id]["python_module"].endswith(PACK_FOLDER), node_id
    assert info["PiSAGuidanceGrid"]["output_name"] == ["sheet", "images"]


@needs_host(minimum=(0, 33))
def test_newer_hosts_show_search_aliases_and_fold_the_advanced_inputs(server):
    info = server.get("/object_info")
    for node_id in NODE_IDS:
        assert {"upscale", "super-resolution"} <= set(info[node_id]["search_aliases"]), node_id
    guidance = info["PiSADualGuidance"]["input"]["required"]
    assert guidance["latent_tile"][1]["advanced"] is True and "advanced" not in guidance["lambda_pix"][1]


@needs_host(below=(0, 33))
def test_older_hosts_load_the_pack_without_the_newer_schema_keywords(server):
    info = server.get("/object_info")
    assert all(not info[node_id].get("search_aliases") for node_id in NODE_IDS)
    assert "advanced" not in info["PiSADualGuidance"]["input"]["required"]["latent_tile"][1]


def test_workflow_over_http_saves_an_image_of_the_exact_size(server):
    from PIL import Image

    entry = server.wait(server.queue(api_prompt(upscale=3.0, lp=0.8, ls=1.2)))
    assert entry["status"]["status_str"] == "success", entry["status"]
    files = saved_images(server, entry)
    assert len(files) == 1 and files[0].is_file()
    h, w = LQ_SIZE
    assert Image.open(files[0]).size == (3 * w, 3 * h)
    # only λ changed: a new image, same size (the ε cache answers; see the CPU suite for the count)
    entry = server.wait(server.queue(api_prompt(upscale=3.0, lp=1.4, ls=0.3)))
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert Image.open(saved_images(server, entry)[0]).size == (3 * w, 3 * h)


def test_single_file_checkpoint_via_extra_model_paths(server):
    from PIL import Image

    entry = server.wait(server.queue(api_prompt(base="v2-1_512-ema-pruned.safetensors", upscale=2.0)))
    assert entry["status"]["status_str"] == "success", entry["status"]
    h, w = LQ_SIZE
    assert Image.open(saved_images(server, entry)[0]).size == (2 * w, 2 * h)


def test_a_clear_error_comes_back_for_bad_settings_before_anything_runs(server):
    answer = json.dumps(server.rejected(api_prompt(tile=32, overlap=32)))
    assert "latent_overlap (32) must be smaller than latent_tile (32)" in answer


def test_cancel_then_run_again(server):
    # a slower job: 64×64 → 256×256 worked at 512 with small tiles (many tile steps)
    slow = api_prompt(lq="big.png", process_size=512, tile=16, overlap=8, lp=0.3, ls=1.7, prefix="cancelled")
    prompt_id = server.queue(slow)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until it is running
        queue = server.get("/queue")
        if any(item[1] == prompt_id for item in queue["queue_running"]):
            break
        time.sleep(0.1)
    time.sleep(1.0)
    server.post("/interrupt")
    entry = server.wait(prompt_id)
    assert entry["status"]["status_str"] == "error"
    assert "execution_interrupted" in json.dumps(entry["status"]["messages"])
    entry = server.wait(server.queue(api_prompt(lp=0.9, ls=1.1, prefix="after_cancel")))
    assert entry["status"]["status_str"] == "success", entry["status"]


def test_templates_are_served_and_run(server):
    listing = server.get("/api/workflow_templates")
    assert sorted(listing.get(PACK_FOLDER, [])) == sorted(TEMPLATES), listing
    info = server.get("/object_info")
    for name in TEMPLATES:
        workflow = server.get(f"/api/workflow_templates/{PACK_FOLDER}/{name}.json")
        for node in workflow["nodes"]:
            if node["type"] in info:  # inputs added since the template was saved are optional and take their default
                spec = info[node["type"]]
                for missing in widget_names(spec)[len(node["widgets_values"]):]:
                    assert "default" in spec["input"]["optional"][missing][1], (name, node["type"], missing)
        prompt = ui_to_api(workflow, info)
        for node in prompt.values():  # tiny test models: keep the work small and use our test image
            if node["class_type"] == "PiSAEncode":
                node["inputs"]["process_size"] = 0
            if node["class_type"] == "PiSALoader":
                node["inputs"]["base_model"] = "[diffusers] sd21-tiny"
        entry = server.wait(server.queue(prompt))
        assert entry["status"]["status_str"] == "success", (name, entry["status"])
        assert saved_images(server, entry), name


def test_the_real_host_gives_the_clis_pixels_with_every_front_ends_defaults(server, model_dir, tmp_path):
    """One upscale path: PiSAUpscale and the four-node chain on the real server, each node with
    the defaults its widgets show, against `pisa-sr upscale` with the CLI's defaults. Both in fp32:
    in another process (other thread counts) bf16 rounding differs, and the tiny random model
    magnifies it far beyond what the real one does (docs/precision.md)."""
    import numpy as np
    from PIL import Image

    from pisa_core.cli.main import main

    rng = np.random.default_rng(5)
    photo = Image.fromarray((rng.random((12, 16, 3)) * 255).astype(np.uint8)).resize((100, 75), Image.BICUBIC)
    photo.save(server.base / "input" / "photo.png")
    info = server.get("/object_info")

    def node(class_type, **links):
        spec = info[class_type]["input"]
        widgets = {name: opts[1]["default"] for name, opts in spec["required"].items()
                   if len(opts) > 1 and isinstance(opts[1], dict) and "default" in opts[1]}
        return {"class_type": class_type, "inputs": {**widgets, **links}}

    loader = node("PiSALoader", base_model="[diffusers] sd21-tiny", pisa_weights="pisa_sr.pkl", dtype="fp32")
    prompt = {"1": loader, "2": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
              "3": node("PiSAUpscale", pisa_model=["1", 0], image=["2", 0]),
              "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "one_node"}},
              "5": node("PiSAEncode", pisa_model=["1", 0], image=["2", 0]),
              "6": node("PiSADualGuidance", pisa_model=["1", 0], latent=["5", 0]),
              "7": node("PiSADecode", pisa_model=["1", 0], latent=["6", 0]),
              "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "four_nodes"}}}
    entry = server.wait(server.queue(prompt))
    assert entry["status"]["status_str"] == "success", entry["status"]
    outputs = {path.name.split("_0")[0]: np.asarray(Image.open(path), dtype=np.int16) for path in saved_images(server, entry)}
    cli_out = tmp_path / "cli.png"
    assert main(["upscale", str(server.base / "input" / "photo.png"), "-o", str(cli_out),
                 "--base", str(model_dir / "sd21-tiny"), "--weights", str(model_dir / "pisa_sr.pkl"),
                 "--dtype", "fp32"]) == 0
    expected = np.asarray(Image.open(cli_out), dtype=np.int16)
    assert set(outputs) == {"one_node", "four_nodes"} and expected.shape == (300, 400, 3)
    for name, image in outputs.items():
        assert image.shape == expected.shape and np.abs(image - expected).max() <= 1, name


def test_memory_stays_flat_over_repeated_runs(server):
    server.wait(server.queue(api_prompt(lp=0.5, ls=0.5, prefix="warm")))
    start = server.rss_mb()
    for i in range(20):  # as many runs as the memory watch
        entry = server.wait(server.queue(api_prompt(lp=0.1 * (i % 10), ls=1.0 + 0.1 * (i // 10), prefix="mem")))
        assert entry["status"]["status_str"] == "success"
    assert server.rss_mb() - start < 300, f"server RSS grew from {start:.0f} MB to {server.rss_mb():.0f} MB"


def test_model_management_hand_off_in_process(model_dir, tmp_path):
    """ComfyUI's own model management (in a fresh interpreter): the PISA_MODEL is a ModelPatcher
    that ComfyUI loads, unloads, reloads on the next use, and frees when nothing holds it."""
    models = tmp_path / "models"
    for folder in ("checkpoints", "diffusers", "pisa_sr"):
        (models / folder).mkdir(parents=True)
    (models / "diffusers" / "sd21-tiny").symlink_to(model_dir / "sd21-tiny", target_is_directory=True)
    (models / "pisa_sr" / "pisa_sr.pkl").symlink_to(model_dir / "pisa_sr.pkl")
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    result = subprocess.run([python, str(Path(__file__).with_name("mm_probe.py")), COMFYUI_DIR, str(models), str(ROOT)],
                            check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    found.pop("device")  # cpu here; the GPU where there is one (then offload really moves weights)
    version = host_version()
    assert found.pop("interrupt_is_base_exception") == (version >= (0, 20))  # cleanup must sit in `finally`
    assert found.pop("patcher_counts_free_memory") == (version >= (0, 12))
    assert found == {"in_comfy": True, "pisa_exts": [".pkl", ".pt", ".pth", ".safetensors"], "handle": "ModelPatcher",
                     "plain_patcher": True, "same_model": True, "registered": True, "weights_on_load_device": True,
                     "after_unload": False, "weights_offloaded": True, "reloaded": True,
                     "out_shape": [1, 64, 64, 3], "memory_asked_each_stage": True, "interrupt": "raised", "freed": True,
                     "novram_left_weights_behind": True, "novram_then_all_on_device": True,
                     "novram_bookkeeping": True}, found


def _chromium() -> str | None:
    for path in (os.environ.get("PISA_SR_CHROMIUM", ""), "/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if path and Path(path).is_file():
            return path
    return None


SMALL_WORK_JS = """() => {
    for (const n of window.app.graph._nodes) {
        if (n.type === "PiSALoader") n.widgets[0].value = "[diffusers] sd21-tiny";
        if (n.type === "PiSAEncode") n.widgets[3].value = 0;
    }
    return window.app.graph._nodes.map(n => n.type);
}"""


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_opens_in_the_real_frontend_without_missing_nodes(frontend_server, name, tmp_path):
    """Headless Chromium, as a user: Templates → Custom Nodes → this pack → the template; no
    missing-node dialog, then Run from the app and an output image appears. With the bundled
    frontend and, where COMFYUI_FRONTEND_ROOT is set, the newest one."""
    server = frontend_server
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright for the frontend check")
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set PISA_SR_CHROMIUM)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True,
                                    args=["--no-sandbox", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(server.url, wait_until="networkidle", timeout=120_000)
            page.wait_for_function("window.app && window.app.graph", timeout=120_000)
            page.wait_for_timeout(1500)
            errors = []  # from here on: the frontend's own start-up noise is not ours
            page.on("pageerror", lambda e: errors.append(str(e)))
            pack = page.get_by_text(PACK_FOLDER, exact=True).first
            if not pack.is_visible():  # a first visit opens the template browser by itself
                page.get_by_text("Templates", exact=True).first.click()
            pack.click()  # a Locator: re-found, scrolled into view and retried if the list re-renders
            page.get_by_text(name, exact=True).first.click()
            page.wait_for_function("window.app.graph._nodes.some(n => n.type === 'PiSALoader')", timeout=30_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(tmp_path / f"{name}.png"))
            body = page.inner_text("body").lower()
            assert "missing node" not in body and "missing custom node" not in body, body[:2000]
            types = set(page.evaluate(SMALL_WORK_JS))
            assert {"PiSALoader", "PiSAEncode", "LoadImage"} <= types
            before = set(server.get("/history"))
            page.get_by_text("Run", exact=True).first.click()
            deadline, new = time.time() + 240, set()
            while time.time() < deadline and not new:
                new = set(server.get("/history")) - before
                time.sleep(0.5)
            assert new, "the app did not queue the workflow"
            entry = server.wait(new.pop())
            assert entry["status"]["status_str"] == "success", entry["status"]
            assert any(o.get("images") for o in entry["outputs"].values())
            page.wait_for_timeout(1000)
            page.screenshot(path=str(tmp_path / f"{name}_done.png"))
            assert not errors, errors
        finally:
            browser.close()
