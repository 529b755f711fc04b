"""The package's layers, enforced: every module of ``router_training.core`` (found with pkgutil, so a new
one is covered) and ``router_training.runtime`` import with the training stack unimportable; the numpy
evaluation modules (policies, metrics, guarantee, report) import without torch and lightning; the runtime
imports nothing of the package but core. Each check runs in a subprocess, so the blocking does not leak
into the other tests."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAINING_STACK = ("torch", "torchvision", "lightning", "pandas", "pyarrow", "datasets", "transformers", "timm",
                  "optuna", "scipy", "cv2")


def import_blocked(blocked: tuple[str, ...], body: str) -> list[str]:
    """Run ``body`` in a fresh interpreter whose ``sys.meta_path`` raises ImportError for ``blocked`` and
    their submodules; ``body`` sets ``names`` (the modules it imported). Returns them."""
    code = textwrap.dedent("""
        import importlib, importlib.abc, json, pkgutil, sys
        BLOCKED = set(%r)
        early = sorted(m for m in sys.modules if m.split('.')[0] in BLOCKED)
        assert not early, f'imported before the block: {early}'

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in BLOCKED:
                    raise ImportError(f'{name} is blocked by tests/test_layers.py')
                return None

        sys.meta_path.insert(0, Block())
    """) % (blocked,) + textwrap.dedent(body) + "\nprint(json.dumps(names))\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_core_and_runtime_import_without_the_training_stack():
    names = import_blocked(TRAINING_STACK, """
        import router_training.core as core
        names = [m.name for m in pkgutil.walk_packages(core.__path__, 'router_training.core.')]
        names.append('router_training.runtime')
        for name in names:
            importlib.import_module(name)
        above = sorted(m for m in sys.modules if m.startswith('router_training.')
                       and not m.startswith('router_training.core') and m != 'router_training.runtime')
        assert not above, f'core or the runtime imports a module above core: {above}'
        from PIL import Image  # and the device path runs: features of an image and a question
        from router_training.core import features as F
        assert F.extract(Image.new('RGB', (8, 8), (1, 2, 3)), 'How many dogs?').shape == (len(F.FEATURE_NAMES),)
    """)
    assert {f"router_training.core.{m}" for m in ("features", "images", "ood", "profile", "scoring", "splits")} \
        <= set(names)


def test_evaluation_modules_import_without_torch_and_lightning():
    names = import_blocked(("torch", "torchvision", "lightning"), """
        names = [f'router_training.{m}' for m in ('policies', 'metrics', 'guarantee', 'report')]
        for name in names:
            importlib.import_module(name)
    """)
    assert len(names) == 4
