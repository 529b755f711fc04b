"""Tests for router_training.config (composing run configs from inline parts and YAML files)."""

from pathlib import Path

import pytest
import yaml

from router_training import config as C
from router_training.core.profile import DeploymentProfile

REPO = Path(__file__).resolve().parents[1]

PROFILE = dict(name="p", edge_power_w=5.0, idle_power_w=1.0, radio_tx_power_w=0.8, uplink_mbps=20.0,
               downlink_mbps=40.0, rtt_s=0.03)
MODELS = [{"name": "small", "tier": "edge", "backend": "reference", "options": {"image_size": 32}},
          {"name": "big", "tier": "cloud"}]


def write(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(obj))
    return path


def base_dict(**over):
    d = {"name": "run", "models": [dict(m) for m in MODELS], "profile": dict(PROFILE)}
    d.update(over)
    return d


def test_inline_parts_and_defaults(tmp_path):
    cfg = C.from_dict(base_dict(), base=tmp_path, workdir=tmp_path)
    assert cfg.name == "run"
    assert cfg.model_names == ["small", "big"] and cfg.tiers == ["edge", "cloud"]
    assert cfg.models[0].options == {"image_size": 32} and cfg.models[1].backend == "reference"
    assert cfg.profile == DeploymentProfile.from_dict(PROFILE)
    # omitted parts take their dataclass defaults
    assert cfg.router == C.RouterConfig()
    assert cfg.tune == C.TuneConfig()
    assert cfg.dataset.kind == "easyvqa" and cfg.dataset.severity == (0.45, 1.0)


def test_parts_as_relative_paths(tmp_path):
    base = tmp_path / "cfgs"
    write(base / "models" / "set.yaml", {"models": MODELS})
    write(base / "profiles" / "p.yaml", PROFILE)
    write(base / "tune.yaml", {"n_trials": 7, "minimize": "energy"})
    write(base / "data" / "ds.yaml", {"seed": 3, "severity": [0.1, 0.5], "limit_images": 10})
    d = base_dict(models="models/set.yaml", profile="profiles/p.yaml", tune="tune.yaml",
                  dataset="data/ds.yaml", router={"epochs": 5, "hidden": [8]})
    cfg = C.from_dict(d, base=base, workdir=tmp_path / "work")
    assert cfg.model_names == ["small", "big"]
    assert cfg.profile.name == "p" and cfg.profile.uplink_mbps == 20.0
    assert cfg.tune.n_trials == 7 and cfg.tune.minimize == "energy"
    assert cfg.tune.min_cloud_accuracy_ratio == 0.99  # default kept
    assert cfg.dataset.seed == 3 and cfg.dataset.limit_images == 10
    assert cfg.dataset.severity == (0.1, 0.5)  # YAML list -> tuple
    assert cfg.router.epochs == 5 and cfg.router.hidden == [8] and cfg.router.lr == C.RouterConfig().lr


def test_models_file_may_be_a_bare_list(tmp_path):
    write(tmp_path / "m.yaml", MODELS)
    cfg = C.from_dict(base_dict(models="m.yaml"), base=tmp_path, workdir=tmp_path)
    assert cfg.tiers == ["edge", "cloud"]


def test_paths_are_relative_to_base_not_cwd(tmp_path, monkeypatch):
    base = tmp_path / "a"
    write(base / "p.yaml", PROFILE)
    other = tmp_path / "b"
    other.mkdir()
    monkeypatch.chdir(other)
    cfg = C.from_dict(base_dict(profile="p.yaml"), base=base, workdir=tmp_path)
    assert cfg.profile.name == "p"
    with pytest.raises(FileNotFoundError, match="p.yaml"):
        C.from_dict(base_dict(profile="p.yaml"), base=other, workdir=tmp_path)


@pytest.mark.parametrize("section", ["router", "tune", "dataset"])
def test_unknown_keys_name_the_section(tmp_path, section):
    with pytest.raises(ValueError, match=rf"^{section}: unknown keys \['bogus'\]"):
        C.from_dict(base_dict(**{section: {"bogus": 1}}), base=tmp_path, workdir=tmp_path)


def test_unknown_keys_in_a_file_part_name_the_section(tmp_path):
    write(tmp_path / "router.yaml", {"epochs": 3, "learning_rate": 0.1})
    with pytest.raises(ValueError, match=r"router: unknown keys \['learning_rate'\]"):
        C.from_dict(base_dict(router="router.yaml"), base=tmp_path, workdir=tmp_path)


def test_unknown_model_key_names_the_model_index(tmp_path):
    models = [dict(m) for m in MODELS]
    models[1]["weights"] = "x"
    with pytest.raises(ValueError, match=r"models\[1\]: unknown keys \['weights'\]"):
        C.from_dict(base_dict(models=models), base=tmp_path, workdir=tmp_path)


def test_unknown_profile_key_raises(tmp_path):
    with pytest.raises(ValueError, match="deployment profile"):
        C.from_dict(base_dict(profile={**PROFILE, "power": 3}), base=tmp_path, workdir=tmp_path)


def test_section_must_be_a_mapping(tmp_path):
    with pytest.raises(ValueError, match="router: expected a mapping"):
        C.from_dict(base_dict(router=[1, 2]), base=tmp_path, workdir=tmp_path)


def test_no_cloud_model_raises(tmp_path):
    models = [{"name": "a", "tier": "edge"}, {"name": "b", "tier": "edge"}]
    with pytest.raises(ValueError, match="cloud"):
        C.from_dict(base_dict(models=models), base=tmp_path, workdir=tmp_path)


def test_duplicate_model_names_raise(tmp_path):
    models = [{"name": "a", "tier": "edge"}, {"name": "a", "tier": "cloud"}]
    with pytest.raises(ValueError, match="unique"):
        C.from_dict(base_dict(models=models), base=tmp_path, workdir=tmp_path)


def test_empty_models_raise(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        C.from_dict(base_dict(models=[]), base=tmp_path, workdir=tmp_path)


def test_bad_tier_raises(tmp_path):
    models = [{"name": "a", "tier": "fog"}, {"name": "b", "tier": "cloud"}]
    with pytest.raises(ValueError, match="tier"):
        C.from_dict(base_dict(models=models), base=tmp_path, workdir=tmp_path)


def test_bad_tune_minimize_raises(tmp_path):
    with pytest.raises(ValueError, match="minimize"):
        C.from_dict(base_dict(tune={"minimize": "accuracy"}), base=tmp_path, workdir=tmp_path)


@pytest.mark.parametrize("key", ["name", "models", "profile"])
def test_missing_top_level_key_raises(tmp_path, key):
    d = base_dict()
    del d[key]
    with pytest.raises(ValueError, match=key):
        C.from_dict(d, base=tmp_path, workdir=tmp_path)


def test_model_missing_required_key_raises_value_error(tmp_path):
    models = [{"name": "a"}, {"name": "b", "tier": "cloud"}]
    with pytest.raises(ValueError, match=r"models\[0\]"):
        C.from_dict(base_dict(models=models), base=tmp_path, workdir=tmp_path)


def test_missing_part_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        C.from_dict(base_dict(tune="nope.yaml"), base=tmp_path, workdir=tmp_path)


def test_load_repo_config(tmp_path):
    cfg = C.load(REPO / "configs" / "easyvqa.yaml", workdir=tmp_path)
    assert cfg.name == "easyvqa"
    assert len(cfg.models) == 3
    assert cfg.model_names == ["edge-small", "edge-large", "cloud"]
    assert cfg.tiers == ["edge", "edge", "cloud"]
    assert cfg.profile.name == "jetson-orin-nano-lte"
    assert cfg.tune.n_trials == 300 and cfg.tune.min_cloud_accuracy_ratio == 0.995
    assert cfg.router == C.RouterConfig()


def test_load_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        C.load(tmp_path / "missing.yaml", workdir=tmp_path)


def test_output_paths_under_workdir(tmp_path):
    work = tmp_path / "work"
    cfg = C.load(REPO / "configs" / "easyvqa.yaml", workdir=work)
    for kind in ("data", "checkpoints", "export", "runs"):
        p = cfg.path(kind)
        assert p == work.resolve() / kind / "easyvqa"
        assert p.is_absolute()
        assert not p.is_relative_to(REPO)
    with pytest.raises(ValueError, match="output kind"):
        cfg.path("cache")


def test_default_workdir_is_cwd_not_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = C.load(REPO / "configs" / "easyvqa.yaml")
    assert cfg.path("data") == tmp_path.resolve() / "data" / "easyvqa"
    assert not cfg.path("data").is_relative_to(REPO)


def test_unknown_section_empty_file_and_bad_yaml_are_clear_errors(tmp_path, capsys):
    from router_training.cli import main

    with pytest.raises(ValueError, match=r"unknown keys \['tunes'\]"):
        C.from_dict(base_dict(tunes={}), base=tmp_path, workdir=tmp_path)
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ValueError, match="empty"):
        C.load(tmp_path / "empty.yaml")
    (tmp_path / "bad.yaml").write_text("a: [\n")
    assert main(["data", str(tmp_path / "bad.yaml")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    with pytest.raises(ValueError, match="image_sise"):
        C.from_dict(base_dict(models=[{"name": "a", "tier": "edge", "options": {"image_sise": 32}},
                                      {"name": "b", "tier": "cloud"}]), base=tmp_path, workdir=tmp_path)


@pytest.mark.parametrize("bad, match", [
    (0.05, "must be a mapping"), (True, "must be a mapping"), ([0.05, 0.1], "must be a mapping"),
    ({"eps": "0.05"}, "eps must be a number"), ({"eps": 2.0}, "0 <= eps < 1"), ({"delta": 0}, "0 < delta < 1"),
    ({"transform": "foo"}, "clip' or 'shift"), ({"resplits": 0}, "positive int"), ({"epsilon": 0.1}, "unknown keys"),
])
def test_guarantee_section_is_validated(bad, match):
    from router_training.config import TuneConfig

    with pytest.raises(ValueError, match=match):
        TuneConfig(guarantee=bad)
    g = TuneConfig(guarantee={"eps": 0.02}).guarantee
    assert (g.eps, g.delta, g.transform, g.resplits) == (0.02, 0.1, "clip", 200)


@pytest.mark.parametrize("bad", [-1, "16", 2.5, True])
def test_image_embedding_must_be_a_non_negative_integer(bad):
    with pytest.raises(ValueError, match="router.image_embedding must be an integer >= 0"):
        C.RouterConfig(image_embedding=bad)
    assert C.RouterConfig(image_embedding=0).image_embedding == 0
