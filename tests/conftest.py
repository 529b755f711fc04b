"""Shared fixtures: a tiny run config (a few dozen easy-VQA images, one-epoch 32-px reference models)
and one end-to-end run of every stage on it, shared by the tests that inspect its outputs."""

import contextlib
import functools
import os
from pathlib import Path
from unittest import mock

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


# path -> times the fresh `pipeline.run` of ``tiny_run`` read it (outcome parts, features, router dataset,
# router checkpoint): tests/test_pipeline.py checks that each was read at most once
FRESH_RUN_READS: dict = {}


@contextlib.contextmanager
def counting_reads(reads: dict):
    """Count, per resolved path, the reads of the files stages hand to each other: Parquet (outcome parts,
    features), the saved router dataset and the router's Lightning checkpoint."""
    import datasets
    import pandas as pd

    from router_training import fit

    def counted(fn, unwrap=lambda a: a[0]):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            path = str(Path(unwrap(args)).resolve())
            reads[path] = reads.get(path, 0) + 1
            return fn(*args, **kwargs)
        return wrapper

    load_ckpt = fit.RouterModule.load_from_checkpoint
    with mock.patch.object(pd, "read_parquet", counted(pd.read_parquet)), \
            mock.patch.object(datasets, "load_from_disk", counted(datasets.load_from_disk)), \
            mock.patch.object(fit.RouterModule, "load_from_checkpoint",
                              counted(load_ckpt, unwrap=lambda a: a[0])):
        yield reads


@pytest.fixture(scope="session")
def tiny_run(tiny_config_path, tmp_path_factory):
    """(config, report table) after `pipeline.run` on the tiny config in a fresh work directory (its reads
    counted in FRESH_RUN_READS)."""
    from router_training import config, pipeline

    cfg = config.load(tiny_config_path, workdir=tmp_path_factory.mktemp("work"))
    with counting_reads(FRESH_RUN_READS):
        table = pipeline.run(cfg)
    return cfg, table
