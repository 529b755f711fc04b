"""Tests for router_training.outcomes (collecting, loading and costing outcome tables)."""

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from router_training import backends, outcomes
from router_training.backends import Answer
from router_training.core.profile import DeploymentProfile
from router_training.core.scoring import vqa_score

PROFILE = DeploymentProfile(name="t", edge_power_w=4.0, idle_power_w=1.0, radio_tx_power_w=2.0,
                            uplink_mbps=8.0, downlink_mbps=16.0, rtt_s=0.05, response_bytes=2000)

SPLITS = ("router-train", "router-val", "router-test")
EXPECTED_TYPES = {"sample_id": "string", "image_id": "string", "split": "string", "model": "string",
                  "tier": "string", "answer": "string", "score": pa.float32(), "confidence": pa.float32(),
                  "compute_s": pa.float64(), "payload_bytes": pa.int64(), "error": "string"}


class RuleBackend:
    """'yes' for questions starting with 'is', else 'circle'; ValueError on questions containing BAD.
    Records every question it is asked and every call."""

    def __init__(self, name="rules"):
        self.name = name
        self.seen: list[str] = []
        self.calls = 0

    def answer(self, images, questions):
        self.calls += 1
        images, questions = list(images), list(questions)
        assert len(images) == len(questions)
        out = []
        for im, q in zip(images, questions):
            if "BAD" in q:
                raise ValueError(f"cannot parse {q!r}")
            text = "yes" if q.lower().startswith("is") else "circle"
            out.append(Answer(text, 0.9, 0.001, backends.payload_bytes(im, q)))
        self.seen.extend(questions)
        return out


class InterruptingBackend(RuleBackend):
    """Answers its first call, then raises KeyboardInterrupt (a user pressing Ctrl-C mid-run)."""

    def answer(self, images, questions):
        if self.calls >= 1:
            self.calls += 1
            raise KeyboardInterrupt
        return super().answer(images, questions)


def shape_image(i: int) -> Image.Image:
    im = Image.new("RGB", (16, 16), "white")
    ImageDraw.Draw(im).ellipse((2, 2, 4 + i % 10, 4 + i % 10), fill=(255 - 10 * i, 0, 10 * i))
    return im


def make_dataset(n=20, bad: int | None = None) -> datasets.Dataset:
    """n rows; even rows ask 'is ...' (answer yes), odd rows 'what shape ...' (answers circle, or square
    on every fourth row). Row ``bad`` asks a question the backend fails on."""
    rows = {"sample_id": [], "image_id": [], "split": [], "image": [], "question": [], "answers": []}
    for i in range(n):
        if i % 2 == 0:
            q, a = f"is there a shape in picture {i}?", ["yes"]
        else:
            q, a = f"what shape is in picture {i}?", ["square"] if i % 4 == 3 else ["circle"]
        if i == bad:
            q = f"BAD question {i}"
        rows["sample_id"].append(f"s{i:03d}")
        rows["image_id"].append(f"img{i // 2:03d}")
        rows["split"].append(SPLITS[i % 3])
        rows["image"].append(shape_image(i))
        rows["question"].append(q)
        rows["answers"].append(a)
    feats = datasets.Features({"sample_id": datasets.Value("string"), "image_id": datasets.Value("string"),
                               "split": datasets.Value("string"), "image": datasets.Image(),
                               "question": datasets.Value("string"),
                               "answers": datasets.List(datasets.Value("string"))})
    return datasets.Dataset.from_dict(rows, features=feats)


def read_all(out_dir):
    parts = sorted(out_dir.glob("part-*.parquet"))
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


@pytest.fixture(scope="module")
def ds():
    return make_dataset()


def test_collect_schema_and_values(tmp_path, ds):
    be = RuleBackend()
    out = outcomes.collect(ds, "m1", "edge", lambda: be, tmp_path / "m1", batch_size=8)
    assert out == tmp_path / "m1"
    parts = sorted(out.glob("part-*.parquet"))
    assert [p.name for p in parts] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert not list(out.glob(".*tmp"))
    for p in parts:
        schema = pq.read_schema(p)
        assert list(schema.names) == list(outcomes.COLUMNS)
        for name, typ in EXPECTED_TYPES.items():
            t = schema.field(name).type
            if typ == "string":
                assert pa.types.is_string(t) or pa.types.is_large_string(t), (name, t)
            else:
                assert t == typ, (name, t)
    df = read_all(out)
    assert list(df.columns) == list(outcomes.COLUMNS)
    assert len(df) == 20 and df["sample_id"].is_unique
    assert df["score"].dtype == np.float32 and df["confidence"].dtype == np.float32
    assert df["compute_s"].dtype == np.float64 and df["payload_bytes"].dtype == np.int64

    df = df.set_index("sample_id")
    for i in range(20):
        row, src = df.loc[f"s{i:03d}"], ds[i]
        assert row["image_id"] == src["image_id"] and row["split"] == src["split"]
        assert row["model"] == "m1" and row["tier"] == "edge"
        assert row["answer"] == ("yes" if i % 2 == 0 else "circle")
        # yes/circle are right except on the 'square' rows (i % 4 == 3)
        assert row["score"] == (0.0 if i % 4 == 3 else 1.0)
        assert row["score"] == vqa_score(row["answer"], src["answers"])
        assert row["confidence"] == pytest.approx(0.9)
        assert row["compute_s"] == 0.001
        assert row["payload_bytes"] == backends.payload_bytes(src["image"], src["question"])
        assert row["error"] == ""
    assert be.calls == 3


def test_collect_scores_ten_answer_questions(tmp_path):
    ds = make_dataset(2)
    ds = ds.map(lambda r, i: {"answers": ["circle"] * 2 + ["square"] * 8} if i == 1 else {}, with_indices=True)
    outcomes.collect(ds, "m", "cloud", RuleBackend, tmp_path / "m")
    df = read_all(tmp_path / "m").set_index("sample_id")
    assert df.loc["s001", "answer"] == "circle"
    assert df.loc["s001", "score"] == pytest.approx(0.6)  # (2 * 1/3 + 8 * 2/3) / 10


def test_bad_sample_recorded_others_answered(tmp_path):
    ds = make_dataset(20, bad=5)
    be = RuleBackend()
    outcomes.collect(ds, "m", "cloud", lambda: be, tmp_path / "m", batch_size=8)
    df = read_all(tmp_path / "m").set_index("sample_id")
    assert len(df) == 20
    bad = df.loc["s005"]
    assert bad["score"] == 0.0 and bad["answer"] == ""
    assert bad["error"] != "" and "ValueError" in bad["error"] and "cannot parse" in bad["error"]
    # the rest of its batch (rows 0-7) and the other batches were answered
    ok = df.drop(index="s005")
    assert (ok["error"] == "").all()
    assert (ok["answer"] != "").all()
    assert ok.loc["s004", "answer"] == "yes" and ok.loc["s007", "answer"] == "circle"
    assert ok.loc["s006", "score"] == 1.0
    # batch 0 failed once, then its 8 samples one by one; batches 1 and 2 once each
    assert be.calls == 1 + 8 + 2
    assert be.seen.count(ds[4]["question"]) == 1


def test_resume_after_interrupt(tmp_path, ds):
    out = tmp_path / "m"
    first = InterruptingBackend()
    with pytest.raises(KeyboardInterrupt):
        outcomes.collect(ds, "m", "edge", lambda: first, out, batch_size=4)
    assert first.calls == 2
    parts = sorted(out.glob("part-*.parquet"))
    assert [p.name for p in parts] == ["part-00000.parquet"]
    done = read_all(out)
    assert list(done["sample_id"]) == [f"s{i:03d}" for i in range(4)]

    second = RuleBackend()
    outcomes.collect(ds, "m", "edge", lambda: second, out, batch_size=4)
    # the second backend saw only the 16 samples left, each once
    assert second.seen == [ds[i]["question"] for i in range(4, 20)]
    assert [p.name for p in sorted(out.glob("part-*.parquet"))] == [f"part-{k:05d}.parquet" for k in range(5)]
    df = read_all(out)
    assert len(df) == 20 and df["sample_id"].is_unique
    assert sorted(df["sample_id"]) == sorted(ds["sample_id"])
    assert not list(out.glob(".*tmp"))

    # nothing left: the backend is not even built
    def must_not_build():
        raise AssertionError("make_backend called with nothing to do")

    assert outcomes.collect(ds, "m", "edge", must_not_build, out, batch_size=4) == out
    assert len(read_all(out)) == 20

    loaded = outcomes.load(tmp_path, ["m"])
    assert len(loaded) == 20


def test_collect_rejects_wrong_answer_count(tmp_path):
    class Short(RuleBackend):
        def answer(self, images, questions):
            return super().answer(images, questions)[:-1]

    with pytest.raises(RuntimeError, match="returned"):
        outcomes.collect(make_dataset(4), "m", "edge", Short, tmp_path / "m", batch_size=4)


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, ds):
    root = tmp_path_factory.mktemp("outcomes")
    outcomes.collect(ds, "small", "edge", RuleBackend, root / "small", batch_size=8)
    outcomes.collect(ds, "big", "cloud", RuleBackend, root / "big", batch_size=16)
    return root


def test_load_in_model_order(two_models):
    df = outcomes.load(two_models, ["big", "small"])
    assert len(df) == 40
    assert list(df["model"][:20]) == ["big"] * 20 and list(df["model"][20:]) == ["small"] * 20
    assert set(df.loc[df["model"] == "big", "tier"]) == {"cloud"}


def test_load_missing_model_raises(two_models):
    with pytest.raises(FileNotFoundError, match="ghost"):
        outcomes.load(two_models, ["small", "ghost"])


def test_load_duplicate_rows_raise(tmp_path, ds):
    outcomes.collect(ds, "m", "edge", RuleBackend, tmp_path / "m", batch_size=8)
    first = sorted((tmp_path / "m").glob("part-*.parquet"))[0]
    # a second outcome for the same samples that disagrees (identical copies are dropped: test_distributed)
    pd.read_parquet(first).assign(answer="other").to_parquet(tmp_path / "m" / "part-00099.parquet", index=False)
    with pytest.raises(ValueError, match="duplicate"):
        outcomes.load(tmp_path, ["m"])


def test_with_costs(two_models):
    df = outcomes.load(two_models, ["small", "big"])
    out = outcomes.with_costs(df, PROFILE)
    assert "latency_s" not in df.columns  # a copy
    lat, en = PROFILE.cost(df["tier"].to_numpy(), df["compute_s"].to_numpy(), df["payload_bytes"].to_numpy())
    np.testing.assert_allclose(out["latency_s"].to_numpy(), lat)
    np.testing.assert_allclose(out["energy_j"].to_numpy(), en)
    # by hand: edge, 0.001 s compute -> latency 0.001 s, energy 4 W * 0.001 s
    edge = out[out["model"] == "small"]
    np.testing.assert_allclose(edge["latency_s"], 0.001)
    np.testing.assert_allclose(edge["energy_j"], 0.004)
    # cloud: 0.05 + payload * 8 / 8e6 + 2000 * 8 / 16e6 + 0.001
    cloud = out[out["model"] == "big"]
    np.testing.assert_allclose(cloud["latency_s"], 0.052 + cloud["payload_bytes"] * 1e-6)
    np.testing.assert_allclose(cloud["energy_j"], 2.0 * cloud["payload_bytes"] * 1e-6 + 1.0 * 0.052)


def test_matrix(two_models):
    df = outcomes.load(two_models, ["small", "big"])
    df.loc[(df["model"] == "big") & (df["sample_id"] == "s003"), "score"] = 0.5
    m = outcomes.matrix(df, ["small", "big"], "score")
    assert m.shape == (20, 2) and m.dtype == np.float64
    assert m[3, 0] == 0.0 and m[3, 1] == 0.5 and m[1, 1] == 1.0
    sub = outcomes.matrix(df, ["big", "small"], "score", sample_ids=["s003", "s001"])
    np.testing.assert_array_equal(sub, [[0.5, 0.0], [1.0, 1.0]])


def test_matrix_missing_pair_raises(two_models):
    df = outcomes.load(two_models, ["small", "big"])
    df = df[~((df["model"] == "big") & (df["sample_id"] == "s007"))]
    with pytest.raises(ValueError, match=r"'s007'.*'big'"):
        outcomes.matrix(df, ["small", "big"], "score")
    with pytest.raises(ValueError, match=r"'s999'"):
        outcomes.matrix(outcomes.load(two_models, ["small", "big"]), ["small", "big"], "score",
                        sample_ids=["s001", "s999"])
