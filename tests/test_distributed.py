"""Distributed collection (router_training.distributed) on 2 CPU processes.

Strategy "ddp_spawn" (gloo): its processes are started with multiprocessing from this one, so it runs
under pytest. "ddp" re-runs the current command once per extra process, which under pytest would
re-run pytest; it is exercised through the command line in tests/test_vlm_pipeline.py.
The backends live at module level so the spawned processes can unpickle them (they import this module).
"""

import dataclasses
import os
import time
from pathlib import Path

import datasets
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from router_training import backends, config, distributed, outcomes
from router_training.backends import Answer

N = 24
SPLITS = ("router-train", "router-val", "router-test")


class RuleBackend:
    """Deterministic: 'yes' for questions starting with 'is', else 'circle'; confidence from the
    question's length; measured compute time (the one field that differs between runs)."""

    name = "rules"

    def answer(self, images, questions):
        t0 = time.perf_counter()
        out = []
        for im, q in zip(images, questions):
            text = "yes" if q.lower().startswith("is") else "circle"
            out.append(Answer(text, (len(q) % 10) / 10, 0.0, backends.payload_bytes(im, q)))
        per = (time.perf_counter() - t0) / max(1, len(questions))
        return [dataclasses.replace(a, compute_s=per) for a in out]


class DyingBackend(RuleBackend):
    """Answers two batches in each process, then kills its process (as SIGKILL would: no cleanup)."""

    calls = 0

    def answer(self, images, questions):
        DyingBackend.calls += 1
        if DyingBackend.calls > 2:
            os._exit(1)
        return super().answer(images, questions)


def make_rules():
    return RuleBackend()


def make_dying():
    return DyingBackend()


def must_not_build():
    raise AssertionError("make_backend called with nothing to do")


def make_dataset(n=N) -> datasets.Dataset:
    rows = {"sample_id": [], "image_id": [], "split": [], "image": [], "question": [], "answers": []}
    for i in range(n):
        im = Image.new("RGB", (16, 16), "white")
        ImageDraw.Draw(im).ellipse((2, 2, 4 + i % 10, 4 + i % 10), fill=(255 - 10 * i, 0, 10 * i))
        q, a = (f"is there a shape in picture {i}?", ["yes"]) if i % 2 == 0 else \
            (f"what shape is in picture {i}?", ["square"] if i % 4 == 3 else ["circle"])
        for k, v in zip(rows, (f"s{i:03d}", f"img{i // 2:03d}", SPLITS[i % 3], im, q, a)):
            rows[k].append(v)
    return datasets.Dataset.from_dict(rows)


DIST = dict(devices=2, strategy="ddp_spawn", accelerator="cpu")


def comparable(df: pd.DataFrame) -> pd.DataFrame:
    """Rows in sample order without the timing column."""
    return df.drop(columns=list(outcomes.TIMING_COLUMNS)).sort_values("sample_id").reset_index(drop=True)


@pytest.fixture(scope="module")
def ds():
    return make_dataset()


@pytest.fixture(scope="module")
def single(ds, tmp_path_factory):
    root = tmp_path_factory.mktemp("single")
    outcomes.collect(ds, "m", "edge", make_rules, root / "m", batch_size=3)
    return outcomes.load(root, ["m"])


def test_two_processes_match_one(ds, single, tmp_path):
    distributed.collect(ds, "m", "edge", make_rules, tmp_path / "m", batch_size=3, **DIST)
    names = sorted(p.name for p in (tmp_path / "m").iterdir())
    # each process wrote its own parts (12 rows each, 3 per batch), nothing else is left behind
    assert names == [f"part-r{r}-{k:05d}.parquet" for r in (0, 1) for k in range(4)]
    merged = outcomes.load(tmp_path, ["m"])
    assert list(merged.columns) == list(outcomes.COLUMNS)
    assert merged["sample_id"].is_unique and sorted(merged["sample_id"]) == sorted(ds["sample_id"])
    pd.testing.assert_frame_equal(comparable(merged), comparable(single))
    assert merged.dtypes.equals(single.dtypes)
    # the ranks answered disjoint halves
    by_rank = {r: set(pd.concat([pd.read_parquet(p) for p in (tmp_path / "m").glob(f"part-r{r}-*")])["sample_id"])
               for r in (0, 1)}
    assert len(by_rank[0]) == len(by_rank[1]) == N // 2 and not by_rank[0] & by_rank[1]
    # a rerun has nothing to do: no process is started, no backend built
    assert distributed.collect(ds, "m", "edge", must_not_build, tmp_path / "m", batch_size=3, **DIST) == tmp_path / "m"


def test_killed_run_resumes_without_duplicates(ds, single, tmp_path):
    out = tmp_path / "m"
    with pytest.raises(Exception):  # noqa: B017  a process died: Lightning/multiprocessing report it
        distributed.collect(ds, "m", "edge", make_dying, out, batch_size=3, **DIST)
    first = {p.name: p.stat().st_mtime_ns for p in outcomes.parts(out)}
    kept = outcomes.load(tmp_path, ["m"])
    # each process wrote at most its first two batches before dying; the one that died first wrote both
    assert 6 <= len(kept) <= 12 and kept["sample_id"].is_unique
    assert len(first) == len(kept) // 3

    distributed.collect(ds, "m", "edge", make_rules, out, batch_size=3, **DIST)
    assert {p.name: p.stat().st_mtime_ns for p in outcomes.parts(out) if p.name in first} == first
    merged = outcomes.load(tmp_path, ["m"])
    assert merged["sample_id"].is_unique and len(merged) == N
    pd.testing.assert_frame_equal(comparable(merged), comparable(single))
    # the resumed run answered only what was missing
    new = pd.concat([pd.read_parquet(out / p) for p in {p.name for p in outcomes.parts(out)} - set(first)])
    assert set(new["sample_id"]).isdisjoint(kept["sample_id"]) and len(new) == N - len(kept)


def test_single_process_parts_and_distributed_parts_merge(ds, single, tmp_path):
    """A run started on one process and finished on two (fewer rows left than... any count works)."""
    out = tmp_path / "m"
    outcomes.collect(ds.select(range(N - 1)), "m", "edge", make_rules, out, batch_size=8)  # 23 rows, 3 parts
    distributed.collect(ds, "m", "edge", make_rules, out, batch_size=3, **DIST)  # 1 row left: rank 1 gets none
    names = sorted(p.name for p in outcomes.parts(out))
    assert names == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet", "part-r0-00000.parquet"]
    pd.testing.assert_frame_equal(comparable(outcomes.load(tmp_path, ["m"])), comparable(single))
    # and back on one process: nothing left, its numbering skips the distributed parts' names
    assert outcomes.next_part(out) == 3 and outcomes.next_part(out, rank=0) == 1 and outcomes.next_part(out, 1) == 0


# ---------------------------------------------------------------------------------------------------
# pieces that need no processes
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,world", [(24, 2), (5, 3), (1, 4), (0, 2)])
def test_shard_sampler_covers_every_row_once(n, world):
    shards = [list(distributed.ShardSampler(n, r, world)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert [len(distributed.ShardSampler(n, r, world)) for r in range(world)] == [len(s) for s in shards]


def test_load_drops_identical_duplicates_and_rejects_conflicting_ones(ds, tmp_path):
    out = tmp_path / "m"
    outcomes.collect(ds, "m", "edge", make_rules, out, batch_size=8)
    copy = pd.read_parquet(out / "part-00001.parquet").assign(compute_s=9.0)  # same outcomes, other timing
    outcomes._write_part(copy, out, 0, stem="part-r1")
    df = outcomes.load(tmp_path, ["m"])
    assert len(df) == N and df["sample_id"].is_unique and list(df.columns) == list(outcomes.COLUMNS)
    assert (df["compute_s"] < 9.0).all()  # the first part's copy is kept
    copy.loc[0, "answer"] = "triangle"
    outcomes._write_part(copy, out, 1, stem="part-r1")
    with pytest.raises(ValueError, match=r"disagree.*part-00001.parquet.*part-r1-00001.parquet"):
        outcomes.load(tmp_path, ["m"])


def test_worker_detection(monkeypatch):
    for k in distributed._RANK_VARIABLES:
        monkeypatch.delenv(k, raising=False)
    assert not distributed.is_worker()
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("NODE_RANK", "0")
    assert not distributed.is_worker()
    monkeypatch.setenv("NODE_RANK", "1")  # the main process of a second node
    assert distributed.is_worker()


def test_collect_config_and_cli_overrides(tmp_path):
    from router_training import cli

    assert not config.CollectConfig().distributed
    assert config.CollectConfig(devices="2").devices == 2 and config.CollectConfig(devices=2).distributed
    assert config.CollectConfig(strategy="ddp").distributed and config.CollectConfig(num_nodes=2).distributed
    for bad in ({"devices": 0}, {"devices": "two"}, {"num_nodes": 0}, {"batch_size": 0}):
        with pytest.raises(ValueError, match="collect"):
            config.CollectConfig(**bad)
    assert cli._devices("0,1") == [0, 1] and cli._devices("4") == "4"
    profile = str(Path(__file__).resolve().parents[1] / "configs" / "profiles" / "jetson_orin_lte.yaml")
    d = {"name": "x", "dataset": {"limit_images": 4}, "profile": profile,
         "models": [{"name": "c", "tier": "cloud"}], "collect": {"devices": 2, "strategy": "ddp_spawn"}}
    assert config.from_dict(d).collect == config.CollectConfig(devices=2, strategy="ddp_spawn")
    assert config.from_dict({k: v for k, v in d.items() if k != "collect"}).collect == config.CollectConfig()
    with pytest.raises(ValueError, match=r"collect: unknown keys \['gpus'\]"):
        config.from_dict({**d, "collect": {"gpus": 2}})
    args = cli._parser().parse_args(["collect", "cfg.yaml", "--devices", "3", "--strategy", "ddp"])
    assert (args.devices, args.strategy, args.num_nodes) == ("3", "ddp", None)
