"""The service as a real server: ``python -m lit_explain serve`` in a subprocess on a loopback port."""

from __future__ import annotations

import io
import json
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image
from serve_helpers import b64, png_bytes


def listening_addresses(port: int) -> list[str]:
    """IPv4 addresses with a socket in LISTEN state on ``port``, from /proc/net/tcp."""
    tcp = Path("/proc/net/tcp")
    if not tcp.exists():
        pytest.skip("needs Linux /proc/net/tcp to inspect the bound address")
    found = []
    for line in tcp.read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.append(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def test_binds_loopback_by_default_and_answers(live_server):
    url = live_server["url"]
    health = httpx.get(f"{url}/health", timeout=10).json()
    assert health["status"] == "ok" and health["batching"]["max_batch"] == 8
    r = httpx.post(f"{url}/predict_with_gradcam", json={"image": b64(png_bytes())}, timeout=60)
    assert r.status_code == 200 and r.json()["gradcam_overlay"]
    # --log_below 1.0 records every request into its own complete folder
    assert (live_server["log_dir"] / r.json()["logged"] / "record.json").is_file()
    # the listening socket is bound to 127.0.0.1 only (Linux: /proc/net/tcp lists it as 0100007F:PORT)
    port = int(url.rsplit(":", 1)[1])
    listening = listening_addresses(port)
    assert listening == ["127.0.0.1"], listening


@pytest.mark.parametrize(
    ("path", "content", "status"),
    [
        ("/predict_with_gradcam", b"{oops", 400),
        ("/predict_with_gradcam", json.dumps({"image": "%%%"}).encode(), 400),
        ("/predict_with_gradcam", json.dumps({"image": b64(b"GIF89a but not really")}).encode(), 422),
        ("/predict_with_gradcam", json.dumps({"image": b64(png_bytes((400, 400)))}).encode(), 413),
        ("/analyze_class", json.dumps({"image": b64(png_bytes()), "class_name": "hexagon"}).encode(), 404),
    ],
)
def test_bad_inputs_over_the_wire(live_server, path, content, status):
    url = live_server["url"]
    r = httpx.post(url + path, content=content, headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == status and r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200


def test_pixel_limit_over_the_wire(live_server):
    buffer = io.BytesIO()
    Image.new("RGB", (1200, 1000)).save(buffer, format="PNG")  # 1.2 MP, small file, over --max_pixels 1e6
    r = httpx.post(
        f"{live_server['url']}/predict_with_gradcam", json={"image": b64(buffer.getvalue())}, timeout=60
    )
    assert r.status_code == 413 and "1,200,000 pixels" in r.json()["error"]


def test_concurrent_clients(live_server):
    url = live_server["url"]
    with httpx.Client(timeout=120) as client, ThreadPoolExecutor(6) as pool:
        responses = list(
            pool.map(
                lambda i: client.post(f"{url}/predict_with_gradcam", json={"image": b64(png_bytes(seed=i))}),
                range(12),
            )
        )
    assert [r.status_code for r in responses] == [200] * 12
    batching = httpx.get(f"{url}/health", timeout=10).json()["batching"]
    assert batching["largest_batch"] > 1


def test_startup_errors_are_reported(serve_ckpt, tmp_path, capsys):
    from lit_explain.serve.cli import main as serve_main

    assert serve_main(["--ckpt_path", str(serve_ckpt), "--log_below", "1.5"]) == 2
    assert "--log_below must be a confidence" in capsys.readouterr().err
    assert serve_main(["--ckpt_path", str(tmp_path / "missing.ckpt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert serve_main(["--ckpt_path", str(serve_ckpt), "--layer", "layer9"]) == 2
    assert "layer9" in capsys.readouterr().err
