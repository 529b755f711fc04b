"""Kind "easyvqa": easy-VQA's test split (the ``easy-vqa`` package), the reference models' home."""

from __future__ import annotations

from . import DatasetKind, register

# low light, blur and downscaling separate the edge models from the cloud one; JPEG and colour casts
# barely hurt any model (measured: README, "accuracy by degradation")
DEGRADATIONS = {"clean": 0.2, "blur": 0.18, "low_light": 0.36, "downscale": 0.18, "noise": 0.04,
                "jpeg": 0.02, "color_cast": 0.02}


@register("easyvqa")
class EasyVQA(DatasetKind):
    """``limit_train_images``: images for the reference models. Default degradations: a mix of blur, low
    light, downscaling, noise, JPEG and colour casts (``DEGRADATIONS``). Splits by image only."""

    keys = ("limit_train_images",)
    default_degradations = DEGRADATIONS
    any_split_by = False
    reencode_clean = True

    def load(self, dc, cache_file=None, bad=None):
        from ..data import load_easyvqa

        return load_easyvqa("test", dc.limit_images, dc.seed)
