"""``core.manifest.Manifest``: the one reader and writer of manifest.json keeps every key of an
exported artifact, and refuses a file that is not a router-training manifest."""

import json

import pytest

from router_training.core.decision import CostSpec, DecisionRule
from router_training.core.manifest import Manifest
from router_training.runtime import MANIFEST, Router
from serve_helpers import known_artifact


def test_an_exported_manifest_reads_back_unchanged(tmp_path):
    art = known_artifact(tmp_path / "art")
    raw = json.loads((art / MANIFEST).read_text())
    m = Manifest.read(art / MANIFEST)
    assert m.to_dict() == raw  # nothing lost or added, the network grid and the tuning record included
    assert isinstance(m.cost, CostSpec) and m.cost.names == ["edge-small", "cloud"]
    assert m.rule == DecisionRule((0.6, 0.0), 0.2, 0.0) and m.name == "known" and len(m.network_grid) == 5
    router = Router.load(art)
    assert router.cost == m.cost and router.rule == m.rule and router.decision_at(1.0).thresholds == (0.0, 0.0)
    # a key this version does not know is kept, so an older runtime's re-write loses nothing
    (tmp_path / "extra.json").write_text(json.dumps({**raw, "notes": {"by": "a user"}}))
    assert Manifest.read(tmp_path / "extra.json").to_dict()["notes"] == {"by": "a user"}


def test_a_file_that_is_not_a_manifest_is_refused(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"models": []}))
    with pytest.raises(ValueError, match="no onnx_sha256, features, profile, decision; not a router-training manifest"):
        Manifest.read(tmp_path / "a.json")
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        Manifest.read(tmp_path / "b.json")
