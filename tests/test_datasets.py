"""Tests for bringing your own data: dataset kinds "hf" and "folder" (router_training.data, config)."""

import io
import json
import re
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image, ImageDraw

from router_training import config as C
from router_training import data, outcomes
from router_training.config import DatasetConfig
from router_training.core.features import question_type
from router_training.core.scoring import vqa_score

REPO = Path(__file__).resolve().parents[1]
SCHEMA = {"sample_id": datasets.Value("string"), "image_id": datasets.Value("string"), "image": datasets.Image(),
          "question": datasets.Value("string"), "answers": datasets.List(datasets.Value("string")),
          "options": datasets.List(datasets.Value("string")), "question_type": datasets.Value("string"),
          "group": datasets.Value("string")}


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    """load_dataset's Arrow cache in tmp_path, not the user's HF cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def picture(i: int, size=(48, 36)) -> Image.Image:
    im = Image.new("RGB", size, (15 * (i % 17), 90, 200 - 9 * (i % 20)))
    ImageDraw.Draw(im).ellipse((4, 4, 12 + i % 20, 12 + i % 15), fill=(255, 255, 255))
    return im


def write_folder(root: Path, n_images=10, per_image=2, rows=None) -> tuple[Path, Path]:
    """``root/images/<i>.png`` and ``root/questions.jsonl``: per image a color question (answers a
    single string on odd images) and a yes/no question with a question_type and id."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    if rows is None:
        rows = []
        for i in range(n_images):
            picture(i).save(images / f"img{i}.png")
            rows.append({"image": f"img{i}.png", "question": f"What color is the circle {i}?",
                         "answers": "white" if i % 2 else ["white", "grey"], "question_id": 1000 + i})
            if per_image > 1:
                rows.append({"image": f"img{i}.png", "question": f"Is there a circle in picture {i}?",
                             "answers": ["yes"], "question_id": 2000 + i, "question_type": "existence"})
    qfile = root / "questions.jsonl"
    qfile.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return images, qfile


def folder_config(root: Path, **kw) -> DatasetConfig:
    images, qfile = write_folder(root, **{k: kw.pop(k) for k in ("n_images", "per_image", "rows") if k in kw})
    return DatasetConfig(kind="folder", images_dir=str(images), questions=str(qfile), **kw)


def vqav2_parquet(path: Path, n_images=6, per_image=3) -> Path:
    """A VQAv2-shaped parquet file: answers is a list of 10 records {answer, answer_confidence,
    answer_id}; image_id and question_id are ints; question_type is VQA's question prefix."""
    rows = {"question_type": [], "multiple_choice_answer": [], "answers": [], "image_id": [], "answer_type": [],
            "question_id": [], "question": [], "image": []}
    for i in range(n_images):
        for j in range(per_image):
            human = ["2"] * 3 + ["3"] * 6 + ["three"]  # "three" normalises to "3"
            rows["question_type"].append("how many")
            rows["multiple_choice_answer"].append("3")
            rows["answers"].append([{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                                    for k, a in enumerate(human)])
            rows["image_id"].append(500000 + i)
            rows["answer_type"].append("number")
            rows["question_id"].append((500000 + i) * 1000 + j)
            rows["question"].append(f"How many circles are in picture {i} ({j})?")
            rows["image"].append(picture(i))
    ds = datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())
    ds.to_parquet(str(path))
    return path


VQAV2_COLUMNS = {"image": "image", "question": "question", "answers": "answers.answer",
                 "question_type": "question_type", "image_id": "image_id", "sample_id": "question_id"}


# ---------------------------------------------------------------------------------------------------
# folder
# ---------------------------------------------------------------------------------------------------


def test_folder_normalises_to_the_row_schema(tmp_path):
    ds = data.load_base(folder_config(tmp_path))
    assert ds.column_names == list(data.BASE_COLUMNS)
    assert dict(ds.features) == SCHEMA
    assert len(ds) == 20
    rows = {r["sample_id"]: r for r in ds}
    assert rows["1000"]["answers"] == ["white", "grey"] and rows["1001"]["answers"] == ["white"]  # list or one string
    assert rows["1000"]["image_id"] == "img0.png" and rows["2000"]["image_id"] == "img0.png"
    assert rows["2000"]["question_type"] == "existence"  # given
    assert rows["1000"]["question_type"] == question_type("What color is the circle 0?") == "color"  # computed
    im = rows["1003"]["image"]
    assert isinstance(im, Image.Image) and im.size == (48, 36)
    assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(picture(3)))


def test_folder_without_question_ids_numbers_rows_and_renames_keys(tmp_path):
    rows = [{"file": f"img{i}.png", "q": f"is it {i}?", "a": ["yes"]} for i in range(4)]
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        picture(i).save(images / f"img{i}.png")
    dc = folder_config(tmp_path, rows=rows, columns={"image": "file", "question": "q", "answers": "a"})
    ds = data.load_base(dc)
    assert ds["sample_id"] == ["q0", "q1", "q2", "q3"]
    assert ds["question"] == [f"is it {i}?" for i in range(4)]
    assert ds["question_type"] == ["yes/no"] * 4


def test_folder_missing_key_names_line_and_key(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    picture(0).save(images / "a.png")
    rows = [{"image": "a.png", "question": "q?", "answers": ["x"]}, {"image": "a.png", "answers": ["y"]}]
    with pytest.raises(ValueError, match=r"questions.jsonl:2: no key 'question'"):
        data.load_base(folder_config(tmp_path, rows=rows))


def test_folder_image_written_two_ways_is_one_image(tmp_path):
    """"./pics/a.png", "pics/a.png" and the absolute path name one file: one image_id, so the split by image
    cannot put its questions in two splits."""
    (tmp_path / "images" / "pics").mkdir(parents=True)
    picture(0).save(tmp_path / "images" / "pics" / "a.png")
    ways = ["./pics/a.png", "pics/a.png", str(tmp_path / "images" / "pics" / "a.png"), "pics/../pics/a.png"]
    rows = [{"image": w, "question": f"q{i}?", "question_id": str(i)} for i, w in enumerate(ways)]
    ds = data.load_base(folder_config(tmp_path, rows=rows))
    assert ds["image_id"] == ["pics/a.png"] * 4


def test_folder_with_no_usable_row_says_why_and_reads_a_byte_order_mark(tmp_path):
    """Every row lacking the question key (it is called "prompt" here), or a CSV given as the questions
    file: one error naming the file's lines and what to do, not a failure inside the datasets library. A
    UTF-8 byte-order mark before the first line is not data."""
    images = tmp_path / "images"
    images.mkdir()
    picture(0).save(images / "a.png")
    rows = [{"image": "a.png", "prompt": f"q{i}?", "question_id": str(i)} for i in range(3)]
    with pytest.raises(ValueError, match=r"none of its 3 rows can be used; the first:\n  sample '0': .*questions.jsonl:1: "
                                         r"no key 'question' .*rename keys with dataset.columns"):
        data.load_base(folder_config(tmp_path, rows=rows))
    qfile = tmp_path / "q.csv"
    qfile.write_text("image,question\na.png,q?\n")
    dc = DatasetConfig(kind="folder", images_dir=str(images), questions=str(qfile))
    with pytest.raises(ValueError, match=r"(?s)none of its 2 rows .*q.csv:1: not a JSON object .*JSON lines"):
        data.load_base(dc)
    qfile.write_text("\ufeff" + json.dumps({"image": "a.png", "question": "q?", "question_id": "x"}) + "\n")
    assert data.load_base(dc)["sample_id"] == ["x"]


@pytest.mark.parametrize("answers", [[], "", ["", "  "], None, "absent"])
def test_questions_without_answers_are_kept_for_graded_outcomes(tmp_path, answers):
    """A question needs no reference answer when its outcome files carry grades (BlindTest: 5,440 of
    10,240): the data stage keeps it with answers [], and only a model that is *run* refuses it,
    before running anything, naming the sample."""
    images = tmp_path / "images"
    images.mkdir()
    picture(0).save(images / "a.png")
    bad = {"image": "a.png", "question": "q2?", "question_id": "bad-7"}
    if answers != "absent":
        bad["answers"] = answers
    rows = [{"image": "a.png", "question": "q?", "answers": ["x"], "question_id": "ok-1"}, bad]
    ds = data.load_base(folder_config(tmp_path, rows=rows))
    assert ds["answers"] == [["x"], []]
    with pytest.raises(ValueError, match=r"model 'm' is run by its backend, but 1 questions have no reference answer"
                                         r".*bad-7.*replay"):
        outcomes.collect(ds, "m", "edge", lambda: pytest.fail("no backend may be built"), tmp_path / "out")


def test_empty_question_text_is_kept_and_counted(tmp_path, caplog):
    """The image may carry the question: an empty text is a warning with a count, not an error."""
    images = tmp_path / "images"
    images.mkdir()
    picture(0).save(images / "a.png")
    rows = [{"image": "a.png", "question": "", "answers": ["x"]}, {"image": "a.png", "question": "  ", "answers": ["y"]},
            {"image": "a.png", "question": "what?", "answers": ["z"]}]
    with caplog.at_level("WARNING"):
        ds = data.load_base(folder_config(tmp_path, rows=rows))
    assert ds["question"] == ["", "", "what?"]
    assert "2 of 3 questions have an empty text" in caplog.text


def test_split_by_keeps_every_group_in_one_split(tmp_path):
    """dataset.split_by: questions of one template (here: one group spanning three images) never
    straddle router splits, though their images differ."""
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(30):
        picture(i).save(images / f"img{i}.png")
        rows += [{"image": f"img{i}.png", "question": f"q{j}?", "answers": ["x"], "question_id": f"{i}-{j}",
                  "template": f"t{i // 3}"} for j in range(2)]
    dc = folder_config(tmp_path, rows=rows, split_by="template")
    ds = data.router_splits(data.load_base(dc), dc.splits, dc.degradations, dc.severity, dc.seed, reencode_clean=False)
    assert ds["group"][:6] == ["t0"] * 6
    by_group = pd.DataFrame({"group": ds["group"], "split": ds["split"]}).groupby("group")["split"].nunique()
    assert len(by_group) == 10 and (by_group == 1).all()
    assert len(set(ds["split"])) == 3
    with pytest.raises(ValueError, match=r"no value for dataset.split_by key 'nope'"):
        data.load_base(folder_config(tmp_path, rows=rows, split_by="nope"))


def test_unreadable_or_missing_image_names_the_sample(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    picture(0).save(images / "good.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    rows = [{"image": "good.png", "question": "q?", "answers": ["x"], "question_id": 1},
            {"image": "broken.png", "question": "q?", "answers": ["x"], "question_id": 2}]
    with pytest.raises(ValueError, match=r"sample '2': image .*broken.png cannot be read.*replace"):
        data.load_base(folder_config(tmp_path, rows=rows))
    rows[1]["image"] = "nowhere.png"
    with pytest.raises(ValueError, match=r"sample '2': image file .*nowhere.png not found"):
        data.load_base(folder_config(tmp_path, rows=rows))


def test_duplicate_question_ids_raise(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    picture(0).save(images / "a.png")
    rows = [{"image": "a.png", "question": "q?", "answers": ["x"], "question_id": 5}] * 2
    with pytest.raises(ValueError, match=r"(?s)1 bad rows.*sample '5': .*questions.jsonl:2: question id 5 \(key "
                                         r"'question_id'\) is also on line 1; give every question its own id"):
        data.load_base(folder_config(tmp_path, rows=rows))


# ---------------------------------------------------------------------------------------------------
# hf
# ---------------------------------------------------------------------------------------------------


def test_hf_parquet_vqav2_style_nested_answers(tmp_path):
    path = vqav2_parquet(tmp_path / "val.parquet")
    dc = DatasetConfig(kind="hf", path="parquet", data_files=str(path), split="train", columns=VQAV2_COLUMNS)
    ds = data.load_base(dc)
    assert dict(ds.features) == SCHEMA and len(ds) == 18
    r = ds[4]
    assert r["sample_id"] == str(500001 * 1000 + 1) and r["image_id"] == "500001"
    assert r["answers"] == ["2"] * 3 + ["3"] * 6 + ["three"]
    assert r["question_type"] == "how many"  # the dataset's own
    # ten human answers: the official leave-one-out VQA accuracy
    assert vqa_score("3", r["answers"]) == 1.0
    assert vqa_score("2", r["answers"]) == pytest.approx((3 * (2 / 3) + 7 * 1.0) / 10)
    assert vqa_score("4", r["answers"]) == 0.0
    assert np.array_equal(np.asarray(r["image"].convert("RGB")), np.asarray(picture(1)))


def test_hf_missing_column_names_it_and_lists_available(tmp_path):
    path = vqav2_parquet(tmp_path / "val.parquet", n_images=2, per_image=1)
    cols = {**VQAV2_COLUMNS, "question": "query"}
    dc = DatasetConfig(kind="hf", path="parquet", data_files=str(path), split="train", columns=cols)
    with pytest.raises(ValueError, match=r"column 'query' \(for our 'question'\) not found; available columns: "
                                         r"\[.*'multiple_choice_answer'.*\]"):
        data.load_base(dc)
    dc.columns = {**VQAV2_COLUMNS, "answers": "answers.text"}
    with pytest.raises(ValueError, match=r"'answers.text': no field 'text'; fields: \['answer', "):
        data.load_base(dc)
    dc.columns = {**VQAV2_COLUMNS, "answers": "answers"}
    with pytest.raises(ValueError, match=r"holds records .*answers: answers.answer"):
        data.load_base(dc)


def test_hf_local_imagefolder_without_ids(tmp_path):
    root = tmp_path / "imagefolder"
    root.mkdir()
    with open(root / "metadata.jsonl", "w") as f:
        for i in range(5):
            picture(i).save(root / f"p{i}.png")
            f.write(json.dumps({"file_name": f"p{i}.png", "prompt": f"how many circles {i}?", "gold": ["1"]}) + "\n")
    dc = DatasetConfig(kind="hf", path=str(root), columns={"image": "image", "question": "prompt", "answers": "gold"})
    ds = data.load_base(dc)
    assert len(ds) == 5 and ds["sample_id"] == [f"q{i}" for i in range(5)]
    assert len(set(ds["image_id"])) == 5  # an id per distinct image, from its file name or bytes
    assert ds["question_type"] == ["count"] * 5 and ds["answers"] == [["1"]] * 5


def test_hf_images_joined_from_a_second_dataset(tmp_path):
    """GQA on the hub keeps questions and images in two configs, joined on the image id."""
    q = datasets.Dataset.from_dict({"id": [f"q{i}" for i in range(6)], "imageId": ["n1", "n2", "n3"] * 2,
                                    "question": [f"is the sky blue {i}?" for i in range(6)],
                                    "answer": ["yes", "no"] * 3})
    q.to_parquet(str(tmp_path / "instructions.parquet"))
    imgs = datasets.Dataset.from_dict({"id": ["n1", "n2", "n3", "n4"], "image": [picture(i) for i in range(4)]})
    imgs.cast_column("image", datasets.Image()).to_parquet(str(tmp_path / "images.parquet"))
    dc = DatasetConfig(kind="hf", path="parquet", data_files=str(tmp_path / "instructions.parquet"),
                       columns={"question": "question", "answers": "answer", "image_id": "imageId", "sample_id": "id"},
                       images={"data_files": str(tmp_path / "images.parquet"),
                               "columns": {"image_id": "id", "image": "image"}})
    ds = data.load_base(dc)
    assert ds["answers"] == [["yes"], ["no"]] * 3
    for r in ds:
        k = int(r["image_id"][1:]) - 1
        assert np.array_equal(np.asarray(r["image"].convert("RGB")), np.asarray(picture(k)))
    bad = datasets.Dataset.from_dict({"id": ["q9"], "imageId": ["n7"], "question": ["q?"], "answer": ["x"]})
    bad.to_parquet(str(tmp_path / "bad.parquet"))
    dc.data_files = str(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"sample 'q9': image id 'n7' is not in the images dataset"):
        data.load_base(dc)


def test_limit_images_is_a_seeded_subset_of_images(tmp_path):
    path = vqav2_parquet(tmp_path / "val.parquet", n_images=12, per_image=3)
    kw = dict(kind="hf", path="parquet", data_files=str(path), split="train", columns=VQAV2_COLUMNS)
    a = data.load_base(DatasetConfig(limit_images=5, seed=1, **kw))
    b = data.load_base(DatasetConfig(limit_images=5, seed=1, **kw))
    c = data.load_base(DatasetConfig(limit_images=5, seed=2, **kw))
    assert len(set(a["image_id"])) == 5 and len(a) == 15  # every question of the kept images
    assert a["sample_id"] == b["sample_id"]
    assert set(a["image_id"]) != set(c["image_id"])
    assert len(data.load_base(DatasetConfig(limit_images=100, **kw))) == 36


# ---------------------------------------------------------------------------------------------------
# router splits and config
# ---------------------------------------------------------------------------------------------------


def run_config(tmp_path, dataset: dict) -> C.Config:
    d = {"name": "byod", "dataset": dataset,
         "models": [{"name": "e", "tier": "edge", "backend": "replay", "options": {"path": "e.jsonl"}},
                    {"name": "c", "tier": "cloud", "backend": "replay", "options": {"path": "c.jsonl"}}],
         "profile": str(REPO / "configs" / "profiles" / "jetson_orin_lte.yaml")}
    return C.from_dict(d, base=tmp_path, workdir=tmp_path / "work")


def test_a_dataset_file_edited_in_place_is_a_changed_dataset(tmp_path):
    """A hub-format dataset's local parquet file rewritten under the same path: the cached router dataset
    belongs to the old file, so the data stage refuses, naming the file (as for a folder's questions
    file, tests/test_replay.py), instead of silently reusing it; unchanged, the cache loads."""
    path = vqav2_parquet(tmp_path / "val.parquet", n_images=12, per_image=1)
    cfg = run_config(tmp_path, {"kind": "hf", "path": "parquet", "data_files": "val.parquet", "split": "train",
                                "columns": VQAV2_COLUMNS, "splits": {"router-train": 0.5, "router-val": 0.25,
                                                                     "router-test": 0.25}})
    assert len(data.build_router_dataset(cfg)) == 12
    assert len(data.build_router_dataset(cfg)) == 12  # unchanged: the cache
    vqav2_parquet(path, n_images=10, per_image=1)
    with pytest.raises(ValueError, match=r"changed: \['the content of .*val.parquet'\]"):
        data.build_router_dataset(cfg)


def test_router_dataset_from_a_folder_split_by_image_clean_by_default(tmp_path):
    write_folder(tmp_path / "mine", n_images=24)
    cfg = run_config(tmp_path, {"kind": "folder", "images_dir": "mine/images", "questions": "mine/questions.jsonl",
                                "limit_images": 20, "seed": 3})
    assert cfg.dataset.degradations == {"clean": 1.0}
    assert cfg.dataset.images_dir == str((tmp_path / "mine" / "images").resolve())  # relative to the config
    ds = data.build_router_dataset(cfg)
    df = ds.to_pandas()
    assert set(df.columns) >= {*data.BASE_COLUMNS, "split", "degradation", "severity"}
    assert df["image_id"].nunique() == 20 and len(df) == 40
    assert df.groupby("image_id")["split"].nunique().max() == 1  # disjoint by image
    assert df.drop_duplicates("image_id")["split"].value_counts().to_dict() == {
        "router-train": 10, "router-val": 5, "router-test": 5}
    assert (df["degradation"] == "clean").all() and (df["severity"] == 0).all()
    # clean images keep their original bytes (no re-encoding)
    r = ds[0]
    original = (tmp_path / "mine" / "images" / r["image_id"]).read_bytes()
    assert ds.cast_column("image", datasets.Image(decode=False))[0]["image"]["bytes"] == original
    # cached: a rerun loads what the first run saved
    assert data.build_router_dataset(cfg)["sample_id"] == ds["sample_id"]
    assert not any(p.name.startswith(".router_dataset") for p in cfg.path("data").iterdir())


def test_router_splits_with_degradations_on_any_base(tmp_path):
    base = data.load_base(folder_config(tmp_path, n_images=16))
    ds = data.router_splits(base, {"a": 0.5, "b": 0.5}, {"clean": 1.0, "blur": 1.0, "downscale": 1.0},
                            (0.5, 1.0), seed=7, reencode_clean=False)
    df = ds.to_pandas()
    assert set(df["split"]) == {"a", "b"} and df.groupby("image_id")["split"].nunique().max() == 1
    assert (df.groupby("image_id")["degradation"].nunique() == 1).all()
    assert df.loc[df["degradation"] != "clean", "severity"].between(0.5, 1.0).all()
    shrunk = [r["image"].size for r in ds if r["degradation"] == "downscale"]
    assert shrunk and all(s[0] < 48 for s in shrunk)
    again = data.router_splits(base, {"a": 0.5, "b": 0.5}, {"clean": 1.0, "blur": 1.0, "downscale": 1.0},
                               (0.5, 1.0), seed=7, reencode_clean=False).to_pandas()
    assert again[["split", "degradation", "severity"]].equals(df[["split", "degradation", "severity"]])
    with pytest.raises(ValueError, match=r"router splits \[.*'c'\] get no groups"):
        data.router_splits(base.select(range(2)), {"a": 0.5, "b": 0.5, "c": 0.01}, {"clean": 1.0})


def test_dataset_config_kinds_and_errors(tmp_path):
    assert DatasetConfig().degradations == C.EASYVQA_DEGRADATIONS  # easyvqa default unchanged
    hf = DatasetConfig(kind="hf", path="x/y", columns={"image": "img", "question": "q", "answers": "a"})
    assert hf.degradations == {"clean": 1.0}
    given = DatasetConfig(kind="hf", path="x/y", columns=hf.columns, degradations={"blur": 1.0})
    assert given.degradations == {"blur": 1.0}
    with pytest.raises(ValueError, match="kind must be one of"):
        DatasetConfig(kind="coco")
    with pytest.raises(ValueError, match="needs 'path'"):
        DatasetConfig(kind="hf", columns=hf.columns)
    with pytest.raises(ValueError, match=r"must map \['question'\]"):
        DatasetConfig(kind="hf", path="x/y", columns={"image": "img", "answers": "a"})
    with pytest.raises(ValueError, match=r"dataset.scorer must be one of"):
        DatasetConfig(scorer="bleu")
    with pytest.raises(ValueError, match=r"kind .easyvqa. splits by image_id only"):
        DatasetConfig(split_by="question_type")
    with pytest.raises(ValueError, match=r"unknown names \['label'\]"):
        DatasetConfig(kind="hf", path="x/y", columns={**hf.columns, "label": "l"})
    with pytest.raises(ValueError, match="needs 'images_dir'"):
        DatasetConfig(kind="folder", questions="q.jsonl")
    with pytest.raises(ValueError, match="key 'path' is for kind 'hf', not 'easyvqa'"):
        DatasetConfig(path="x/y")
    with pytest.raises(ValueError, match="models .* use backend 'reference'"):
        C.from_dict({"name": "r", "dataset": {"kind": "hf", "path": "x/y", "columns": hf.columns},
                     "models": [{"name": "m", "tier": "cloud"}],
                     "profile": str(REPO / "configs" / "profiles" / "jetson_orin_lte.yaml")}, base=tmp_path)


def test_builder_data_files_resolve_against_the_config_file(tmp_path):
    (tmp_path / "cfg" / "data").mkdir(parents=True)
    (tmp_path / "cfg" / "ds.yaml").write_text(yaml.safe_dump(
        {"kind": "hf", "path": "parquet", "data_files": {"validation": "data/val.parquet"}, "split": "validation",
         "columns": {"image": "image", "question": "question", "answers": "answers"}}))
    cfg = C.from_dict({"name": "r", "dataset": "cfg/ds.yaml",
                       "models": [{"name": "m", "tier": "cloud", "backend": "replay", "options": {"path": "o.csv"}}],
                       "profile": str(REPO / "configs" / "profiles" / "jetson_orin_lte.yaml")}, base=tmp_path)
    assert cfg.dataset.data_files == {"validation": str((tmp_path / "cfg" / "data" / "val.parquet").resolve())}
    assert cfg.dataset.path == "parquet"
    assert cfg.models[0].options["path"] == str((tmp_path / "o.csv").resolve())


@pytest.mark.parametrize("name", ["vqav2", "gqa", "textvqa", "folder"])
def test_ready_dataset_configs_load(tmp_path, name):
    path = REPO / "configs" / "datasets" / f"{name}.yaml"
    cfg = C.from_dict({"name": name, "dataset": str(path),
                       "models": [{"name": "m", "tier": "cloud", "backend": "replay", "options": {"path": "o.csv"}}],
                       "profile": str(REPO / "configs" / "profiles" / "jetson_orin_lte.yaml")}, base=tmp_path)
    assert cfg.dataset.kind in ("hf", "folder") and cfg.dataset.degradations == {"clean": 1.0}
    if name == "vqav2":
        assert cfg.dataset.columns["answers"] == "answers.answer" and cfg.dataset.split == "validation"


# ---------------------------------------------------------------------------------------------------
# bad rows: every one listed in one pass; dataset.on_bad_row error | skip; the shared question rule
# ---------------------------------------------------------------------------------------------------


def corrupt_png() -> bytes:
    """A PNG whose chunks all have valid CRCs (so ``verify`` passes) but whose pixel data is not a zlib
    stream: only decoding it fails."""
    import struct
    import zlib

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buf, format="PNG")
    d = buf.getvalue()
    i = d.index(b"IDAT")
    n = struct.unpack(">I", d[i - 4:i])[0]
    return d[:i + 4] + b"\0" * n + struct.pack(">I", zlib.crc32(b"IDAT" + b"\0" * n)) + d[i + 8 + n:]


def hostile_folder(root: Path) -> tuple[Path, list[dict]]:
    """A folder dataset with six good rows and one of each kind of bad row (all without question_id, so
    sample ids are row numbers q0, q1, ...). Returns (images folder, rows as written)."""
    images = root / "images"
    images.mkdir(parents=True)
    for i in range(6):
        picture(i).save(images / f"ok{i}.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (images / "corrupt.png").write_bytes(corrupt_png())
    rows = [{"image": f"ok{i}.png", "question": f"is it {i}?", "answers": ["yes"]} for i in range(6)]
    rows += [{"image": "broken.png", "question": "q?", "answers": ["x"]},        # q7: unreadable
             {"image": "nowhere.png", "question": "q?", "answers": ["x"]},       # q8: missing file
             {"image": "ok0.png", "question": "bad\x00text", "answers": ["x"]},  # q9: control character
             {"image": "ok1.png", "question": "w" * 2001, "answers": ["x"]},     # q10: over-long
             {"image": "corrupt.png", "question": "q?", "answers": ["x"]},       # q11: does not decode
             {"image": "ok2.png", "question": "", "answers": ["x"]}]             # q12: empty: kept
    lines = [json.dumps(r) for r in rows]
    lines.insert(3, "{not json")                                               # q3: the 4th line
    (root / "questions.jsonl").write_text("\n".join(lines) + "\n")
    return images, rows


def test_every_bad_row_is_listed_in_one_pass(tmp_path):
    """Before, the data stage stopped at the first bad image and named only that one."""
    hostile_folder(tmp_path / "d")
    cfg = run_config(tmp_path, {"kind": "folder", "images_dir": "d/images", "questions": "d/questions.jsonl"})
    assert cfg.dataset.on_bad_row == "error"
    with pytest.raises(ValueError) as e:
        data.build_router_dataset(cfg)
    msg = str(e.value)
    assert "6 bad rows" in msg and "dataset.on_bad_row: skip" in msg
    for sid, reason in [("q3", r".*questions.jsonl:4: not a JSON object"), ("q7", r"image .*broken.png cannot be read"),
                        ("q8", r"image file .*nowhere.png not found"), ("q9", r"question has control character U\+0000"),
                        ("q10", r"question has 2001 characters"), ("q11", r"image .*corrupt.png cannot be decoded")]:
        assert re.search(rf"sample '{sid}': {reason}", msg), (sid, msg)
    listed = data.bad_rows(cfg)
    assert [b["sample_id"] for b in listed] == ["q3", "q7", "q8", "q9", "q10", "q11"]
    assert not (cfg.path("data") / "router_dataset").exists()  # nothing saved


def test_skip_drops_only_the_bad_rows_and_writes_them_down(tmp_path, caplog):
    hostile_folder(tmp_path / "d")
    cfg = run_config(tmp_path, {"kind": "folder", "images_dir": "d/images", "questions": "d/questions.jsonl",
                                "on_bad_row": "skip", "splits": {"a": 0.5, "b": 0.5}})
    with caplog.at_level("WARNING"):
        ds = data.build_router_dataset(cfg)
    assert "skipped 6 bad rows" in caplog.text
    # every good row kept, with the id it has without the bad rows around it; the empty question too
    assert sorted(ds["sample_id"], key=lambda s: int(s[1:])) == ["q0", "q1", "q2", "q4", "q5", "q6", "q12"]
    assert dict(zip(ds["sample_id"], ds["question"]))["q12"] == ""
    skipped = data.bad_rows(cfg)
    assert len(skipped) == 6 and all(b["reason"] for b in skipped)
    assert json.loads((cfg.path("data") / data.BAD_ROWS).read_text().splitlines()[0])["sample_id"] == "q3"
    assert data.build_router_dataset(cfg)["sample_id"] == ds["sample_id"]  # cached


def test_folders_built_before_on_bad_row_still_load(tmp_path):
    write_folder(tmp_path / "mine", n_images=8)
    cfg = run_config(tmp_path, {"kind": "folder", "images_dir": "mine/images", "questions": "mine/questions.jsonl",
                                "splits": {"a": 0.5, "b": 0.5}})
    data.build_router_dataset(cfg)
    stamp = cfg.path("data") / "dataset_config.json"
    old = json.loads(stamp.read_text())
    del old["on_bad_row"], old["files"]  # written by a version without these keys
    stamp.write_text(json.dumps(old))
    assert len(data.build_router_dataset(cfg)) == 16
    with pytest.raises(ValueError, match="on_bad_row must be 'error' or 'skip'"):
        DatasetConfig(on_bad_row="ignore")


def test_the_data_stage_reads_questions_by_the_devices_rule(tmp_path):
    """Stored question text = features.check_question's, the text route() reads too."""
    from router_training.core.features import check_question

    images = tmp_path / "images"
    images.mkdir()
    picture(0).save(images / "a.png")
    raw = ["  What\tcolour\n is it? ", "\uff37\uff28\uff21\uff34?", "\u56fe\u4e2d\u6709\u51e0\u4e2a\u5706?", "   "]
    rows = [{"image": "a.png", "question": q, "answers": ["x"], "question_id": i} for i, q in enumerate(raw)]
    ds = data.load_base(folder_config(tmp_path, rows=rows))
    assert ds["question"] == [check_question(q)[0] for q in raw] == ["What colour is it?", "WHAT?",
                                                                       "\u56fe\u4e2d\u6709\u51e0\u4e2a\u5706?", ""]
    rows.append({"image": "a.png", "question": "bad\x1b[0m", "answers": ["x"], "question_id": 9})
    with pytest.raises(ValueError, match=r"sample '9': question has control character U\+001B"):
        data.load_base(folder_config(tmp_path, rows=rows))
