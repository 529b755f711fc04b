"""Tests for replaying per-sample outcomes from a file (outcomes.replay, backend "replay") and one
end-to-end run on a folder dataset with two replay models."""

import json
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image, ImageDraw

from router_training import backends, config, evaluate, outcomes, pipeline
from router_training.core.scoring import vqa_score

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("router-train", "router-val", "router-test")
EXPECTED_TYPES = {"sample_id": "string", "image_id": "string", "split": "string", "model": "string",
                  "tier": "string", "answer": "string", "score": pa.float32(), "confidence": pa.float32(),
                  "compute_s": pa.float64(), "payload_bytes": pa.int64(), "error": "string"}


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def picture(i: int) -> Image.Image:
    im = Image.new("RGB", (40, 32), (10 * (i % 25), 120, 240 - 10 * (i % 24)))
    ImageDraw.Draw(im).rectangle((3, 3, 8 + i % 25, 8 + i % 20), fill=(250, 250, 250))
    return im


def make_dataset(n=12) -> datasets.Dataset:
    """n questions on n // 2 images; sample ids "007"-style (leading zeros must survive CSV)."""
    return datasets.Dataset.from_dict({
        "sample_id": [f"{i:03d}" for i in range(n)], "image_id": [f"im{i // 2}" for i in range(n)],
        "split": [SPLITS[(i // 2) % 3] for i in range(n)], "image": [picture(i // 2) for i in range(n)],
        "question": [f"what number is {i}?" for i in range(n)],
        "answers": [[str(i)] if i % 3 else [str(i)] * 3 + ["x"] * 7 for i in range(n)],
    }).cast_column("image", datasets.Image())


def read_parts(out_dir: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted(out_dir.glob("part-*.parquet"))], ignore_index=True)


def check_schema(out_dir: Path) -> None:
    for p in out_dir.glob("part-*.parquet"):
        schema = pq.read_schema(p)
        assert schema.names == list(outcomes.COLUMNS)
        for name, t in EXPECTED_TYPES.items():
            assert schema.field(name).type in ((pa.string(), pa.large_string()) if t == "string" else (t,)), name


def test_replay_jsonl_computes_what_the_file_lacks(tmp_path):
    ds = make_dataset()
    rows = [{"qid": f"{i:03d}", "pred": str(i) if i % 2 == 0 else "wrong", "p": 0.25} for i in range(12)]
    path = tmp_path / "edge.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = outcomes.replay(ds, "edge-vlm", "edge", path, {"sample_id": "qid", "answer": "pred", "confidence": "p"},
                          tmp_path / "out", compute_s=0.125)
    check_schema(out)
    t = read_parts(out).set_index("sample_id").loc[ds["sample_id"]]
    assert (t["model"] == "edge-vlm").all() and (t["tier"] == "edge").all() and (t["error"] == "").all()
    assert t["split"].tolist() == ds["split"] and t["image_id"].tolist() == ds["image_id"]
    expected = [vqa_score(r["pred"], refs) for r, refs in zip(rows, ds["answers"])]
    np.testing.assert_allclose(t["score"], expected, atol=1e-6)
    assert t.loc["000", "score"] == pytest.approx(vqa_score("0", ["0"] * 3 + ["x"] * 7)) and t.loc["001", "score"] == 0
    assert (t["confidence"] == 0.25).all() and (t["compute_s"] == 0.125).all()  # the config's, never a silent 0
    for sid, r in zip(ds["sample_id"], ds):
        assert t.loc[sid, "payload_bytes"] == backends.payload_bytes(r["image"], r["question"])


def test_replay_csv_uses_the_files_numbers(tmp_path):
    ds = make_dataset()
    df = pd.DataFrame({"id": [f"{i:03d}" for i in range(12)], "text": ["NA"] * 12,
                       "acc": [1.0] * 6 + [""] * 6, "conf": np.linspace(0, 1, 12), "secs": [0.5] * 12,
                       "bytes": [1234] * 12})
    path = tmp_path / "cloud.csv"
    df.to_csv(path, index=False)
    cols = {"sample_id": "id", "answer": "text", "score": "acc", "confidence": "conf", "compute_s": "secs",
            "payload_bytes": "bytes"}
    out = outcomes.replay(ds, "cloud-vlm", "cloud", path, cols, tmp_path / "out")
    check_schema(out)
    t = read_parts(out).set_index("sample_id").loc[ds["sample_id"]]
    assert t.index.tolist() == [f"{i:03d}" for i in range(12)]  # leading zeros kept
    assert (t["answer"] == "NA").all()  # not read as a missing value
    assert (t["score"].iloc[:6] == 1.0).all()  # the file's score, even where vqa_score would say 0
    assert (t["score"].iloc[6:] == 0.0).all()  # empty cells: computed
    np.testing.assert_allclose(t["confidence"], np.linspace(0, 1, 12), atol=1e-6)
    assert (t["compute_s"] == 0.5).all() and (t["payload_bytes"] == 1234).all()


def test_replay_parquet_missing_samples_are_errors_and_rerun_adds_nothing(tmp_path):
    ds = make_dataset()
    have = [f"{i:03d}" for i in range(12) if i not in (4, 9)] + ["not-in-dataset"]
    path = tmp_path / "outcomes.parquet"
    pd.DataFrame({"sample_id": have, "answer": [str(int(s)) if s.isdigit() else "?" for s in have]}).to_parquet(path)
    out = outcomes.replay(ds, "m", "edge", path, None, tmp_path / "out", compute_s=0.1)
    check_schema(out)
    t = read_parts(out).set_index("sample_id")
    assert len(t) == 12 and "not-in-dataset" not in t.index
    assert t["confidence"].isna().all()  # unknown, not 0: baselines that need it are left out
    r = ds[4]
    for sid in ("004", "009"):
        assert t.loc[sid, "error"] == f"not in replay file {path}"
        assert t.loc[sid, "score"] == 0 and t.loc[sid, "answer"] == ""
        assert t.loc[sid, "compute_s"] == 0.1  # an attempt's cost, not a free one
    assert t.loc["004", "payload_bytes"] == backends.payload_bytes(r["image"], r["question"])
    ok = t.drop(["004", "009"])
    assert (ok["error"] == "").all() and (ok["score"] > 0).all()
    parts = sorted(out.glob("part-*.parquet"))
    before = {p: p.stat().st_mtime_ns for p in parts}
    outcomes.replay(ds, "m", "edge", path, None, out, compute_s=0.1)
    assert {p: p.stat().st_mtime_ns for p in sorted(out.glob("part-*.parquet"))} == before
    assert len(outcomes.load(tmp_path, ["out"])) == 12  # raises on duplicate rows
    # the report counts them
    assert evaluate.failed_outcomes(outcomes.load(tmp_path, ["out"])) == {
        "m": {"count": 2, "of": 12, "example": f"not in replay file {path}"}}


def test_replay_refuses_a_file_none_of_whose_ids_match(tmp_path):
    """Ids written another way (zero-padded here) match no sample: an error showing both sides' ids, not a
    router trained on all-zero scores. A file's repeated identical row is read once."""
    ds = make_dataset(4)
    path = tmp_path / "o.csv"
    pd.DataFrame({"sample_id": ["00000", "00001"], "correct": [1, 0]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"replay m: none of the 4 dataset samples is in .*o.csv: the ids differ "
                                         r"\(dataset \['000', '001', '002'\], file \['00000', '00001'\]\)"):
        outcomes.replay(ds, "m", "edge", path, None, tmp_path / "out", compute_s=1.0)
    pd.DataFrame({"sample_id": ["000", "001", "000"], "correct": [1, 0, 1], "compute_s": [0.2, 300, 0.2]}).to_csv(
        path, index=False)
    outcomes.replay(ds, "m", "edge", path, None, tmp_path / "out")
    t = read_parts(tmp_path / "out").set_index("sample_id")
    assert t.loc["000", "score"] == 1 and t.loc["001", "score"] == 0 and t.loc["000", "compute_s"] == 0.2
    assert t.loc["002", "compute_s"] == pytest.approx(150.1)  # missing: the file's median, not 0


def test_replay_resumes_a_partial_collection(tmp_path):
    ds = make_dataset()
    path = tmp_path / "o.jsonl"
    path.write_text("".join(json.dumps({"sample_id": f"{i:03d}", "answer": str(i)}) + "\n" for i in range(12)))
    outcomes.replay(ds.select(range(5)), "m", "cloud", path, None, tmp_path / "out", compute_s=1.0)
    outcomes.replay(ds, "m", "cloud", path, None, tmp_path / "out", compute_s=1.0)
    t = read_parts(tmp_path / "out")
    assert len(t) == 12 and t["sample_id"].is_unique and len(list((tmp_path / "out").glob("part-*"))) == 2


def test_replay_file_errors(tmp_path):
    ds = make_dataset(4)
    path = tmp_path / "o.csv"
    pd.DataFrame({"sample_id": ["000", "001"], "prediction": ["a", "b"]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"no answer, score or correct column \(columns: \['sample_id', 'prediction'\]\)"):
        outcomes.replay(ds, "m", "edge", path, None, tmp_path / "out")
    with pytest.raises(ValueError, match=r"column 'text' \(for our 'answer'\) not found; available columns: "
                                         r"\['sample_id', 'prediction'\]"):
        outcomes.replay(ds, "m", "edge", path, {"answer": "text"}, tmp_path / "out")
    with pytest.raises(ValueError, match=r"model 'm': 2 of its outcomes .* have no compute time .*models\[\].compute_s"):
        outcomes.replay(ds, "m", "edge", path, {"answer": "prediction"}, tmp_path / "out")
    with pytest.raises(ValueError, match=r"column 'conf' \(for our 'confidence'\) not found"):
        outcomes.replay(ds, "m", "edge", path, {"answer": "prediction", "confidence": "conf"}, tmp_path / "out")
    pd.DataFrame({"sample_id": ["000", "001", "000"], "answer": ["a", "b", "c"]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"sample '000' has different outcomes on data rows \[1, 3\]; keep one "
                                         r"outcome per sample \(a file of several models needs model_column\)"):
        outcomes.replay(ds, "m", "edge", path, None, tmp_path / "out")
    pd.DataFrame({"sample_id": ["000", "001"], "answer": ["a", "b"], "score": ["1", "high"]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"'score'.* must hold numbers; sample '001' \(data row 2\) has 'high'"):
        outcomes.replay(ds, "m", "edge", path, None, tmp_path / "out")
    pd.DataFrame({"sample_id": ["000"], "answer": ["a"], "confidence": [3.0]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]; sample '000' \(data row 1\) has 3 \(it looks "
                                         r"like a percentage: divide by 100\)"):
        outcomes.replay(ds, "m", "edge", path, None, tmp_path / "out")
    (tmp_path / "o.jsonl").write_text('{"sample_id": "000", "answer": "a"}\n\n{"sample_id": "001", "answer": \n')
    with pytest.raises(ValueError, match=r"o.jsonl:3: not valid JSON"):  # the file's line, blank lines counted
        outcomes.replay(ds, "m", "edge", tmp_path / "o.jsonl", None, tmp_path / "out")
    (tmp_path / "o.xlsx").write_text("x")
    with pytest.raises(ValueError, match="unknown format"):
        outcomes.replay(ds, "m", "edge", tmp_path / "o.xlsx", None, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        outcomes.replay(ds, "m", "edge", tmp_path / "nope.jsonl", None, tmp_path / "out")
    assert not list((tmp_path / "out").glob("part-*"))


def test_replay_long_format_grades_only(tmp_path):
    """One long file for every model (a model column), grades without answers, no reference answers in
    the dataset, no costs in the file: BlindTest's shape. Each model's rows are its own; the grade is the
    file's; compute time the config's; confidence unknown; the image payload computed once per image."""
    ds = make_dataset().map(lambda r: {"answers": []})
    rows = []
    for i in range(12):
        rows.append({"qid": f"{i:03d}", "system": "small", "prediction": None, "is_correct": i % 2 == 0})
        rows.append({"qid": f"{i:03d}", "system": "big", "prediction": None, "is_correct": ["yes", "no", "true"][i % 3]})
    path = tmp_path / "all.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    calls = []

    def payloads(ids):
        calls.append(set(ids))
        return outcomes.image_payloads(ds, ids)

    known = {}

    def cached(ids):  # what pipeline.image_payloads does: compute each image once for all models
        todo = set(ids) - set(known)
        if todo:
            known.update(payloads(todo))
        return known

    cols = {"sample_id": "qid", "correct": "is_correct"}
    for name, comp in (("small", 0.5), ("big", 2.0)):
        outcomes.replay(ds, name, "edge" if name == "small" else "cloud", path, cols, tmp_path / name,
                        model_column="system", model_value=name, compute_s=comp, image_payload=cached)
    t = outcomes.load(tmp_path, ["small", "big"]).set_index(["model", "sample_id"])
    assert t.loc["small", "score"].tolist() == [float(i % 2 == 0) for i in range(12)]
    assert t.loc["big", "score"].tolist() == [float(i % 3 != 1) for i in range(12)]
    assert (t.loc["small", "compute_s"] == 0.5).all() and (t.loc["big", "compute_s"] == 2.0).all()
    assert t["confidence"].isna().all() and (t["error"] == "").all()
    assert len(calls) == 1 and calls[0] == set(ds["image_id"])  # 6 images, once, for both models
    r = ds[3]
    assert t.loc[("big", "003"), "payload_bytes"] == backends.payload_bytes(r["image"], r["question"])
    with pytest.raises(ValueError, match=r"no rows with system == 'gpt'; the file has \['big', 'small'\]"):
        outcomes.replay(ds, "gpt", "edge", path, cols, tmp_path / "gpt", model_column="system", compute_s=1.0)
    with pytest.raises(ValueError, match=r"12 samples have neither a grade .* nor a reference answer"):
        outcomes.replay(ds, "small", "edge", path, {"sample_id": "qid", "answer": "prediction"}, tmp_path / "x",
                        model_column="system", model_value="small", compute_s=1.0)
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"sample_id": ["000"], "correct": ["maybe"]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match=r"'maybe' of sample '000' \(data row 1\) is not a grade"):
        outcomes.replay(ds, "m", "edge", bad, None, tmp_path / "y", compute_s=1.0)
    rows[7]["is_correct"] = "maybe"  # a long file: named by its line in the file (8), not among big's rows
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"'maybe' of sample '003' \(data row 8\) is not a grade"):
        outcomes.replay(ds, "big", "cloud", path, cols, tmp_path / "z", model_column="system", compute_s=1.0)


def test_outcomes_section_and_costs_in_the_config(tmp_path, monkeypatch):
    """``outcomes: {path, model_column, columns}`` makes every model without a backend replay that file;
    ``${VAR}`` paths come from the environment; configured compute_s needs its source."""
    monkeypatch.setenv("MY_RESULTS", str(tmp_path))
    d = {"name": "r", "dataset": {"kind": "folder", "images_dir": "${MY_RESULTS}/img", "questions": "${MY_RESULTS}/q.jsonl"},
         "outcomes": {"path": "${MY_RESULTS}/all.jsonl", "model_column": "system", "columns": {"sample_id": "qid"}},
         "models": [{"name": "a", "tier": "edge", "compute_s": 1.0, "compute_source": "measured on our phone"},
                    {"name": "b", "tier": "cloud", "compute_s": 2, "compute_source": "vendor docs",
                     "options": {"model_value": "B-v2"}}],
         "profile": str(REPO / "configs" / "profiles" / "phone_wifi.yaml")}
    cfg = config.from_dict(d, base=tmp_path)
    a, b = cfg.models
    assert a.backend == b.backend == "replay"
    assert a.options == {"path": str(tmp_path / "all.jsonl"), "model_column": "system", "columns": {"sample_id": "qid"},
                         "model_value": "a"}
    assert b.options["model_value"] == "B-v2" and cfg.dataset.images_dir == str(tmp_path / "img")
    monkeypatch.delenv("MY_RESULTS")
    with pytest.raises(ValueError, match=r"needs the environment variable MY_RESULTS"):
        config.from_dict(d, base=tmp_path)
    with pytest.raises(ValueError, match=r"compute_s 1.0 needs compute_source"):
        config.ModelConfig(name="a", tier="edge", compute_s=1.0)
    monkeypatch.setenv("MY_RESULTS", str(tmp_path))
    wide = {**d, "outcomes": {"path": "${MY_RESULTS}/wide.csv", "columns": {"sample_id": "qid"}}}  # no model column
    with pytest.raises(ValueError, match=r"model_column: COLUMN.*a wide table \(a grade column per model\) is read "
                                         r"per model instead: backend: replay"):
        config.from_dict(wide, base=tmp_path)
    with pytest.raises(ValueError, match=r"model_value needs model_column"):
        config.ModelConfig(name="a", tier="edge", backend="replay", options={"path": "x", "model_value": "a"})
    with pytest.raises(ValueError, match=r"not both"):
        config.TuneConfig(min_cloud_accuracy_ratio=0.97, max_accuracy_drop=0.01)
    assert config.TuneConfig().accuracy_floor(0.8) == pytest.approx(0.792)
    assert config.TuneConfig(max_accuracy_drop=0.01).accuracy_floor(0.8) == pytest.approx(0.79)


def test_replay_model_config(tmp_path):
    with pytest.raises(ValueError, match="backend 'replay' takes options"):
        config.ModelConfig(name="m", tier="edge", backend="replay", options={})
    with pytest.raises(ValueError, match="backend 'replay' takes options"):
        config.ModelConfig(name="m", tier="edge", backend="replay", options={"path": "x.csv", "colums": {}})
    with pytest.raises(ValueError, match="backend 'replay' takes options"):
        config.ModelConfig(name="m", tier="edge", backend="replay", options={"path": "x.csv", "columns": {"id": "q"}})
    m = config.ModelConfig(name="m", tier="edge", backend="replay", options={"path": "x.csv"})
    cfg = config.Config("r", config.DatasetConfig(), [m], None, None, None, tmp_path)
    with pytest.raises(ValueError, match="no backend to run"):
        pipeline.make_backend(cfg, "m")


# ---------------------------------------------------------------------------------------------------
# end to end: a folder dataset, two replay models, every stage
# ---------------------------------------------------------------------------------------------------


def test_pipeline_on_a_folder_dataset_with_replay_models(tmp_path):
    """48 questions on 24 images; the edge model is right on the yes/no half, the cloud model on all."""
    mine = tmp_path / "mine"
    (mine / "images").mkdir(parents=True)
    questions, edge, cloud = [], [], []
    for i in range(24):
        im = picture(i)
        if i % 3 == 0:
            im = im.resize((20, 16))  # some small images, so image features vary
        im.save(mine / "images" / f"{i}.png")
        for j, (q, a) in enumerate([(f"is there a white box in {i}?", "yes"), (f"what number is image {i}?", str(i))]):
            qid = f"{i}-{j}"
            questions.append({"image": f"{i}.png", "question": q, "answers": a, "question_id": qid})
            edge.append({"question_id": qid, "output": a if j == 0 else "no idea", "latency": 0.05 if j == 0 else None})
            cloud.append({"qid": qid, "answer": a, "confidence": 0.9, "compute_s": 0.2})
    (mine / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in questions))
    (mine / "edge.jsonl").write_text("".join(json.dumps(r) + "\n" for r in edge))
    pd.DataFrame(cloud).to_csv(mine / "cloud.csv", index=False)
    run = {
        "name": "byod",
        "dataset": {"kind": "folder", "images_dir": "mine/images", "questions": "mine/questions.jsonl"},
        "models": [
            {"name": "edge-vlm", "tier": "edge", "backend": "replay", "compute_s": 0.07,
             "compute_source": "test: only some rows time it",
             "options": {"path": "mine/edge.jsonl",
                         "columns": {"sample_id": "question_id", "answer": "output", "compute_s": "latency"}}},
            {"name": "cloud-vlm", "tier": "cloud", "backend": "replay",
             "options": {"path": "mine/cloud.csv", "columns": {"sample_id": "qid"}}},
        ],
        "profile": str(REPO / "configs" / "profiles" / "jetson_orin_lte.yaml"),
        "router": {"epochs": 3, "batch_size": 16},
        "tune": {"n_trials": 10},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    cfg = config.load(tmp_path / "run.yaml", workdir=tmp_path / "work")
    table = pipeline.run(cfg)
    for row in ("all-edge (edge-vlm)", "all-cloud (cloud-vlm)", "oracle", "router"):
        assert f"| {row} |" in table
    t = outcomes.load(cfg.path("data") / "outcomes", cfg.model_names)
    assert len(t) == 96 and (t["error"] == "").all()
    acc = t.groupby("model")["score"].mean()
    assert acc["edge-vlm"] == 0.5 and acc["cloud-vlm"] == 1.0
    assert set(t["split"]) == set(SPLITS) and t.groupby("image_id")["split"].nunique().max() == 1
    rep = json.loads((cfg.path("runs") / "report.json").read_text())["policies"]
    assert rep["all-cloud (cloud-vlm)"]["accuracy"] == 1.0 and rep["oracle"]["accuracy"] == 1.0
    assert (cfg.path("export") / "router.onnx").is_file() and (cfg.path("runs") / "report.md").is_file()
    # the edge file times half its rows: the configured figure fills the others, and changing it replays
    # that model again (a stale cached cost would be silent)
    edge_s = t[t["model"] == "edge-vlm"].set_index("sample_id")["compute_s"]
    assert set(edge_s[edge_s.index.str.endswith("-0")]) == {0.05} and set(edge_s[edge_s.index.str.endswith("-1")]) == {0.07}
    run["models"][0]["compute_s"] = 0.5
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    again = pipeline.stage_collect(config.load(tmp_path / "run.yaml", workdir=tmp_path / "work"))
    edge_s = again[again["model"] == "edge-vlm"].set_index("sample_id")["compute_s"]
    assert set(edge_s[edge_s.index.str.endswith("-1")]) == {0.5} and set(edge_s[edge_s.index.str.endswith("-0")]) == {0.05}
    assert (again.loc[again["model"] == "cloud-vlm", "compute_s"] == 0.2).all()
    # an outcome file fixed in place (same path, same config) is replayed again and the router retrained;
    # a questions file edited in place is refused like a changed dataset section
    fitted = pipeline.fit_settings(config.load(tmp_path / "run.yaml", workdir=tmp_path / "work"))
    cloud[0]["answer"] = "wrong"
    pd.DataFrame(cloud).to_csv(mine / "cloud.csv", index=False)
    cfg = config.load(tmp_path / "run.yaml", workdir=tmp_path / "work")
    assert pipeline.fit_settings(cfg) != fitted
    again = pipeline.stage_collect(cfg)
    assert again.set_index(["model", "sample_id"]).loc[("cloud-vlm", "0-0"), "score"] == 0.0
    (mine / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in questions[:40]))
    with pytest.raises(ValueError, match=r"changed: \['the content of .*questions.jsonl'\]"):
        pipeline.stage_collect(config.load(tmp_path / "run.yaml", workdir=tmp_path / "work"))
