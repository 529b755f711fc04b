"""Backends as a plug-in point: ``backend: package.module:ClassName`` in a model config, and backend
options checked against the constructor's signature at config load (``backends.check_options``)."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from router_training import backends, config, pipeline

REPO = Path(__file__).resolve().parents[1]
PROFILE = str(REPO / "configs" / "profiles" / "jetson_orin_lte.yaml")


def load(tmp_path, *models):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"name": "plugins", "models": list(models), "profile": PROFILE}))
    return config.load(path, workdir=tmp_path)


def model(name, tier, backend, **options):
    return {"name": name, "tier": tier, "backend": backend, "options": options}


def test_third_party_backend_is_loaded_built_and_answers(tmp_path):
    import plugin_backend

    cfg = load(tmp_path, model("edge-echo", "edge", "plugin_backend:EchoBackend", prefix="e:"),
               model("cloud-echo", "cloud", "plugin_backend:EchoBackend", prefix="c:", confidence=0.9))
    assert [m.backend for m in cfg.models] == ["plugin_backend:EchoBackend"] * 2
    edge, cloud = pipeline.make_backend(cfg, "edge-echo"), pipeline.make_backend(cfg, "cloud-echo")
    assert isinstance(edge, plugin_backend.EchoBackend) and (edge.name, cloud.name) == ("edge-echo", "cloud-echo")
    ims, qs = [Image.new("RGB", (32, 24), "red"), Image.new("RGB", (48, 16), "blue")], ["what color", "how many"]
    a, b = edge.answer(ims, qs), cloud.answer(ims, qs)
    assert [x.text for x in a] == ["e:color 32", "e:many 48"] and [x.text for x in b] == ["c:color 32", "c:many 48"]
    assert [x.confidence for x in a] == [0.5, 0.5] and [x.confidence for x in b] == [0.9, 0.9]
    assert [x.payload_bytes for x in a] == [backends.payload_bytes(im, q) for im, q in zip(ims, qs)]
    assert all(x.error == "" for x in a + b)


def test_kwargs_constructor_takes_any_option(tmp_path):
    cfg = load(tmp_path, model("any", "cloud", "plugin_backend:AnyOptionsBackend", temperature=0.3, foo="bar"))
    b = pipeline.make_backend(cfg, "any")
    assert b.name == "any" and b.options == {"temperature": 0.3, "foo": "bar"}
    assert b.answer([Image.new("RGB", (8, 8))], ["q"])[0].text == "[('foo', 'bar'), ('temperature', 0.3)]"


def test_misspelled_openai_option_fails_at_load(tmp_path):
    with pytest.raises(ValueError) as e:
        load(tmp_path, model("cloud", "cloud", "openai", base_ulr="http://localhost:8000/v1", model="m"))
    msg = str(e.value)
    assert "model 'cloud'" in msg and "unknown options ['base_ulr']" in msg
    assert "allowed: ['api_key_env', 'backoff_s', 'base_url', 'concurrency'," in msg and "'name'" not in msg


def test_missing_required_and_name_options(tmp_path):
    with pytest.raises(ValueError, match=r"model 'c': backend 'plugin_backend:EchoBackend': missing required "
                                         r"options \['prefix'\]; allowed: \['confidence', 'prefix'\]"):
        load(tmp_path, model("c", "cloud", "plugin_backend:EchoBackend", confidence=0.2))
    with pytest.raises(ValueError, match=r"missing required options \['model'\]"):
        load(tmp_path, model("c", "cloud", "transformers", dtype="bfloat16"))
    with pytest.raises(ValueError, match="option 'name' is the model's name, set by the pipeline"):
        load(tmp_path, {"name": "c", "tier": "cloud", "backend": "plugin_backend:EchoBackend",
                        "options": {"prefix": "x", "name": "other"}})


@pytest.mark.parametrize("backend, match", [
    ("plugin_backend:Missing", "module 'plugin_backend' has no attribute 'Missing'"),
    ("no_such_pkg.mod:Missing", r"cannot import module 'no_such_pkg.mod' \(ModuleNotFoundError"),
    ("plugin_backend:NOT_A_CLASS", r"plugin_backend.NOT_A_CLASS is not a class \(a int\)"),
    ("transformer", r"unknown backend; known: \['openai', 'reference', 'replay', 'transformers'\]"),
    (":EchoBackend", "expected a registered name or 'package.module:ClassName'"),
])
def test_unresolvable_backend_fails_at_load(tmp_path, backend, match):
    with pytest.raises(ValueError, match=match) as e:
        load(tmp_path, model("cloud-x", "cloud", backend))
    assert str(e.value).startswith(f"model 'cloud-x': backend {backend!r}: ")
    with pytest.raises(ValueError, match=match):  # and when built directly
        backends.build(backend, name="cloud-x")


def test_checking_transformers_options_loads_no_torch():
    code = ("import sys\n"
            "from router_training import config\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
            "config.ModelConfig(name='e', tier='edge', backend='transformers', options={'model': 'x'})\n"
            "try:\n"
            "    config.ModelConfig(name='e', tier='edge', backend='transformers', options={'model': 'x', 'dtyp': 1})\n"
            "except ValueError as e:\n"
            "    assert \"unknown options ['dtyp']\" in str(e), e\n"
            "else:\n"
            "    raise SystemExit('no error')\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
            "assert not bad and 'router_training.vlm' in sys.modules, bad\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
