"""The exported graph (``nets.RouterNet.exportable`` written by ``export.write_onnx``) computes the network's
P(correct): for the default ``ThumbnailCNN`` its members fused into one pass, in torch and in onnxruntime."""

import types

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from router_training import export, nets, search
from router_training.config import RouterConfig
from router_training.core.features import FEATURE_NAMES, PIXEL_FEATURES

N_SIGNALS = len(FEATURE_NAMES) - len(PIXEL_FEATURES)


@pytest.mark.parametrize("members", [1, 3])
@pytest.mark.parametrize("thumbnail", ["cnn", "masked", "none"])
def test_fused_ensemble_equals_the_ensemble_in_torch_and_onnxruntime(members, thumbnail, tmp_path):
    torch.manual_seed(members)
    width = len(FEATURE_NAMES)  # what fit.fit trains an exported router on; "none": image_embedding 0, no CNN
    rc = RouterConfig(hidden=[24, 12], dropout=0.2, image_embedding=0 if thumbnail == "none" else 8, members=members)
    net = nets.build(rc, N_SIGNALS, len(PIXEL_FEATURES), 3)
    if thumbnail == "masked":  # what search does for a trial without the thumbnail: CNN folded into a bias
        mask = np.ones(len(FEATURE_NAMES), bool)
        mask[N_SIGNALS:] = False
        search.ignore_masked_inputs(types.SimpleNamespace(net=net), mask)
    net.eval()
    x = (torch.randn(9, width) * 2.5).float()  # beyond the +-CLIP range too
    with torch.no_grad():
        want = torch.sigmoid(net(x)).numpy()
        fused = nets.thumbnail_cnn.FusedEnsemble(net).eval()(x).numpy()
    np.testing.assert_allclose(fused, want, atol=1e-6)
    path = export.write_onnx(net, tmp_path / "router.onnx")
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"features": x.numpy()})[0]
    np.testing.assert_allclose(got, want, atol=1e-5)
    # one pass for all members: the graph holds as many convolutions and matmuls as one member's
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("Conv") == (3 if thumbnail == "cnn" else 0)
    assert sum(ops.count(o) for o in ("Gemm", "MatMul")) == 3
