"""Router architectures as a plug-in point (``router.arch``, ``nets``): a built-in one, one of your own as
``package.module:ClassName``, options checked at config load, and each trained, exported and routed."""

import numpy as np
import onnx
import pytest
import yaml

from router_training import config, export, nets
from router_training.config import RouterConfig
from router_training.core.decision import CostSpec
from router_training.core.features import FEATURE_NAMES, PIXEL_FEATURES
from router_training.fit import fit
from router_training.runtime import Router

from test_fit import SPEC, synthetic

DECISION = {"thresholds": [0.5, 0.0], "lambda_latency": 0.2, "lambda_energy": 0.1}


def train_and_export(rc, tmp_path):
    train, val = synthetic(2000, 0), synthetic(500, 1)
    module, dm = fit(train, val, CostSpec.from_dict(SPEC), rc, tmp_path / "fit", loggers=False, progress=False)
    art = export.export(module, dm.mean, dm.std, {**SPEC, "features": dm.stats}, DECISION, tmp_path / "artifact")
    return module, dm, val, art


@pytest.mark.parametrize("arch, options, ops", [("linear", {}, {"Conv": 0, "Gemm+MatMul": 1}),
                                                 ("plugin_arch:PixelMean", {"width": 8}, {"Conv": 0, "Gemm+MatMul": 2})])
def test_an_architecture_trains_reloads_exports_and_routes(arch, options, ops, tmp_path):
    rc = RouterConfig(arch=arch, arch_options=options, epochs=15, batch_size=64, lr=1e-2)
    module, dm, val, art = train_and_export(rc, tmp_path)
    assert type(module.net) is nets.resolve(arch)  # rebuilt from best.ckpt's hyperparameters
    assert module.net.n_inputs == len(FEATURE_NAMES) - (len(PIXEL_FEATURES) if arch == "linear" else 0)
    # it learnt the signal (edge correct iff feature 0 > 0)
    router = Router.load(art)
    p = router.predict(val.x)
    edge_ok = val.x[:, 0] > 0
    assert ((p[:, 0] > 0.5) == edge_ok).mean() > 0.9 and p[edge_ok, 0].mean() - p[~edge_ok, 0].mean() > 0.2
    assert export.parity(module, dm.mean, dm.std, art, val.x)["max_abs_diff"] < 1e-5
    graph = [n.op_type for n in onnx.load(str(art / "router.onnx")).graph.node]
    assert graph.count("Conv") == ops["Conv"] and graph.count("Gemm") + graph.count("MatMul") == ops["Gemm+MatMul"]


def test_ignored_inputs_change_nothing_in_torch_or_the_export(tmp_path):
    """The generic ``RouterNet.ignore_inputs`` (what search does for a trial without some feature groups)."""
    rc = RouterConfig(arch="plugin_arch:PixelMean", arch_options={"width": 8}, epochs=2, batch_size=64)
    module, dm, val, _ = train_and_export(rc, tmp_path)
    mask = np.ones(len(FEATURE_NAMES), bool)
    mask[1:] = False
    module.net.ignore_inputs(mask)
    noisy = val.x.copy()
    noisy[:, 1:] += np.random.default_rng(0).normal(size=noisy[:, 1:].shape).astype(np.float32) * 5
    art = export.export(module, dm.mean, dm.std, SPEC, DECISION, tmp_path / "masked")
    r = Router.load(art)
    np.testing.assert_allclose(r.predict(noisy), r.predict(val.x), atol=1e-6)
    assert export.parity(module, dm.mean, dm.std, art, noisy)["max_abs_diff"] < 1e-5


def load(tmp_path, router):
    path = tmp_path / "run.yaml"
    profile = SPEC["profile"]
    path.write_text(yaml.safe_dump({"name": "nets", "router": router, "profile": profile,
                                    "models": [{"name": n, "tier": t, "backend": "plugin_backend:EchoBackend",
                                                "options": {"prefix": n}} for n, t in (("e", "edge"), ("c", "cloud"))]}))
    return config.load(path, workdir=tmp_path)


@pytest.mark.parametrize("router, message", [
    ({"arch": "resnet"}, "router.arch must be one of ['linear', 'thumbnail_cnn'] or a class of your own as "
                         "'package.module:ClassName', got 'resnet'"),
    ({"arch": "plugin_arch:PixelMean", "arch_options": {"widht": 8}},
     "router.arch_options for 'plugin_arch:PixelMean': unknown keys ['widht']; allowed: ['scale', 'width']"),
    ({"arch": "plugin_arch:PixelMean"}, "router.arch_options for 'plugin_arch:PixelMean': missing required options "
                                        "['width']"),
    ({"arch": "plugin_arch:NotANet"}, "NotANet is not a router_training.nets.RouterNet subclass"),
    ({"arch": "no_such_module:Net"}, "router.arch 'no_such_module:Net': cannot import module 'no_such_module'"),
    ({"arch": "linear", "arch_options": {"width": 3}}, "router.arch_options for 'linear': unknown keys ['width']; "
                                                       "allowed: []"),
])
def test_a_bad_architecture_or_option_fails_at_config_load(router, message, tmp_path):
    with pytest.raises(ValueError) as e:
        load(tmp_path, router)
    assert message in str(e.value)


def test_the_default_config_builds_the_thumbnail_cnn(tmp_path):
    cfg = load(tmp_path, {})
    assert cfg.router.arch == "thumbnail_cnn"
    net = nets.build(cfg.router, 10, len(PIXEL_FEATURES), 2)
    assert type(net).__name__ == "ThumbnailCNN" and len(net.members) == 3 and net.n_inputs == 10 + len(PIXEL_FEATURES)


def test_fit_refuses_a_column_subset_as_the_feature_table(tmp_path):
    train, val = synthetic(50, 0), synthetic(20, 1)
    train.x, val.x = train.x[:, :40], val.x[:, :40]
    with pytest.raises(ValueError, match="features have 40 columns, expected .*pass thumbnail=False"):
        fit(train, val, CostSpec.from_dict(SPEC), RouterConfig(epochs=1), tmp_path, loggers=False, progress=False)
    module, _ = fit(train, val, CostSpec.from_dict(SPEC), RouterConfig(epochs=1), tmp_path, loggers=False,
                    progress=False, thumbnail=False)
    assert module.net.n_pixels == 0 and module.net.n_inputs == 40 and module.net.members[0].cnn is None
