"""The service as a real server: ``python -m lit_explain serve`` in a subprocess on a loopback port."""

from __future__ import annotations

import io
import json
import socket
import time
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


def test_failures_are_logged_through_uvicorn_with_the_request_id(live_server):
    r = httpx.post(f"{live_server['url']}/predict_with_gradcam", json={"image": "@@@"}, timeout=60)
    rid = r.json()["request_id"]
    assert r.status_code == 400 and r.headers["x-request-id"] == rid
    expected = (
        f"INFO:     request {rid}: POST /predict_with_gradcam -> 400: field 'image' is not valid base64"
    )
    deadline = time.monotonic() + 10
    while expected not in live_server["server_log"].read_text() and time.monotonic() < deadline:
        time.sleep(0.1)  # the server writes its log line right after answering
    assert expected in live_server["server_log"].read_text()


def test_device_defaults_to_cuda_when_available(serve_ckpt, monkeypatch, capsys):
    import torch

    from lit_explain.errors import ConfigError
    from lit_explain.inference.explainer import resolve_device
    from lit_explain.serve import cli

    assert "auto (cuda when available, else cpu)" in " ".join(cli.build_parser().format_help().split())
    seen: list[torch.device] = []

    def stop_after_parsing(cfg, guided):
        seen.append(resolve_device(cfg.device))  # what Explainer.from_checkpoint will load onto
        raise ConfigError("stop here")

    monkeypatch.setattr(cli, "explainer_from_args", stop_after_parsing)
    for available, argv, device in [
        (True, [], "cuda"),
        (False, [], "cpu"),
        (True, ["--device", "cpu"], "cpu"),
    ]:
        monkeypatch.setattr(torch.cuda, "is_available", lambda available=available: available)
        assert cli.main(["--ckpt_path", str(serve_ckpt), *argv]) == 2
        assert seen[-1].type == device
    assert "error: stop here" in capsys.readouterr().err


def test_serve_options_are_checked(serve_ckpt, capsys):
    from lit_explain.serve.cli import main as serve_main

    assert serve_main(["--ckpt_path", str(serve_ckpt), "--decode_budget", "0"]) == 2
    assert "--decode_budget must be >= 1" in capsys.readouterr().err
    assert serve_main(["--ckpt_path", str(serve_ckpt), "--log_level", "loud"]) == 2
    assert "--log_level 'loud' is not one of" in capsys.readouterr().err


def test_a_port_in_use_is_one_line(serve_ckpt, capsys):
    from lit_explain.serve.cli import main as serve_main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve_main(["--ckpt_path", str(serve_ckpt), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err, err
