"""The README's example: the easy-VQA stand-ins served in-process (no other server), through
``router-train serve`` and through the embedded ``RoutedClient``; shadow calls and the export for
retraining. Uses the tiny end-to-end run (its artifact and reference models)."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
import yaml
from PIL import Image

from router_training import data
from router_training.config import DatasetConfig
from router_training.core.images import encode_jpeg
from router_training.outcomes import read_replay
from router_training.runtime import Router
from router_training.serve import RoutedClient, decision_log
from router_training.serve.client import RoutedError
from serve_helpers import free_port, openai_client

pytestmark = pytest.mark.slow


def inprocess_endpoints(cfg, **sections) -> dict:
    ref = cfg.path("checkpoints") / "reference"
    return {"models": {m: {"backend": "reference", "options": {"weights": str(ref / f"{m}.safetensors")}}
                       for m in cfg.model_names}, **sections}


def router_test_images(cfg, n):
    ds = data.build_router_dataset(cfg)
    test = ds.filter(lambda s: s == "router-test", input_columns="split")
    return [(r["image"], r["question"]) for r in test.select(range(n))]


def test_routed_client_answers_in_process_as_the_router_decides(tiny_run, tmp_path):
    cfg, _ = tiny_run
    router = Router.load(cfg.path("export"))
    answers = set(json.loads((cfg.path("checkpoints") / "reference" / "cloud.json").read_text())["answers"])
    log = tmp_path / "d.jsonl"
    spec = inprocess_endpoints(cfg, decision_log={"path": str(log), "images": True, "shadow_fraction": 1.0})
    queries = router_test_images(cfg, 6)
    jpegs = [encode_jpeg(im) for im, _ in queries]
    with RoutedClient(cfg.path("export"), spec) as client:
        done = [client.ask(jpeg, q) for jpeg, (_, q) in zip(jpegs, queries)]
        with pytest.raises(RoutedError, match="answers questions about an image") as e:
            client.create(messages=[{"role": "user", "content": "no image here"}], stream=True)
        assert e.value.status == 400  # in-process VQA models need an image: refused before the stream opens
    for jpeg, (_, q), d in zip(jpegs, queries, done):
        assert d.text in answers and d.fallback == "none"
        payload = int(d.headers["x-router-payload-bytes"])
        expected = router.route(Image.open(io.BytesIO(jpeg)), q, router.profile.uplink_mbps, router.profile.rtt_s,
                                payload)
        assert d.model == d.headers["x-router-decision"] == expected.model
        assert d.p_correct == pytest.approx({k: round(v, 4) for k, v in expected.scores.items()}, abs=1e-4)
    rows = decision_log.read(log)
    main = [r for r in rows if r["route"] == "router"]
    shadow = [r for r in rows if r["route"] == "shadow"]
    assert len(main) == 6 and len(shadow) == 6 * (len(cfg.models) - 1)  # every other model, per request
    assert all(r["image_file"] and (log.parent / "d-images" / r["image_file"]).is_file() for r in main)
    out = tmp_path / "retrain"
    assert decision_log.export_training(log, out, cfg.model_names)["requests"] == 6
    dc = DatasetConfig(kind="folder", images_dir=str(log.parent / "d-images"), questions=str(out / "questions.jsonl"),
                       columns={"image": "image_file", "sample_id": "sample_id"}, scorer="given")
    ds = data.load_folder(dc)
    assert sorted(ds["sample_id"]) == sorted(r["request_id"] for r in main)
    for m in cfg.model_names:
        replayed = read_replay(out / "outcomes.jsonl", model_column="model", model_value=m)
        assert len(replayed) == 6 and set(replayed["answer"]) <= answers


def test_router_train_serve_in_process_with_the_openai_client(tiny_run, tmp_path):
    cfg, _ = tiny_run
    port = free_port()
    endpoints = tmp_path / "endpoints.yaml"
    endpoints.write_text(yaml.safe_dump(inprocess_endpoints(cfg, server={"port": port})))
    log = tmp_path / "served.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "router_training.cli", "serve", "--artifact", str(cfg.path("export")),
                             "--endpoints", str(endpoints), "--decision-log", str(log)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "router-train serve did not start"
            time.sleep(0.2)
        client = openai_client(f"http://127.0.0.1:{port}/v1")
        (im, q), = router_test_images(cfg, 1)
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="PNG")
        import base64

        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": q}]}]
        raw = client.chat.completions.with_raw_response.create(model="router", messages=msgs)
        assert raw.parse().choices[0].message.content and raw.headers["x-router-model"] in cfg.model_names
        chunks = list(client.chat.completions.create(model="cloud", messages=msgs, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert [m.id for m in client.models.list()] == ["router", *cfg.model_names]
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert "router-train serve: starting tiny" in out and "Traceback" not in out
    # "ready" is printed once the in-process models are loaded, after "starting", with the address to call
    assert out.index("starting tiny") < out.index(f"ready on http://127.0.0.1:{port}/v1")
    rows = decision_log.read(log)
    assert [(r["route"], r["stream"]) for r in rows] == [("router", False), ("direct", True)]
