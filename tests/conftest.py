"""Shared fixtures: a tiny run config (a few dozen easy-VQA images, one-epoch 32-px reference models)
and one end-to-end run of every stage on it, shared by the tests that inspect its outputs."""

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
pytest_plugins = ["chat_server"]  # the loopback chat-completions server fixture


def tiny_config_dict(**router) -> dict:
    return {
        "name": "tiny",
        "dataset": {"seed": 0, "limit_images": 60, "limit_train_images": 200},
        "models": [
            {"name": "edge-small", "tier": "edge", "options": {"arch": "resnet10t", "image_size": 32, "epochs": 1}},
            {"name": "cloud", "tier": "cloud",
             "options": {"arch": "resnet10t", "image_size": 32, "epochs": 1, "augment_p": 0.8}},
        ],
        "profile": str(REPO / "configs" / "profiles" / "jetson_orin_lte.yaml"),
        "router": {"epochs": 5, **router},
        "tune": {"n_trials": 20},
    }


@pytest.fixture(scope="session")
def tiny_config_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict()))
    return path


@pytest.fixture(scope="session")
def tiny_run(tiny_config_path, tmp_path_factory):
    """(config, report table) after `pipeline.run` on the tiny config in a fresh work directory."""
    from router_training import config, pipeline

    cfg = config.load(tiny_config_path, workdir=tmp_path_factory.mktemp("work"))
    table = pipeline.run(cfg)
    return cfg, table
