"""Kind "hf": any dataset ``datasets.load_dataset`` reads (``sources.load_hf``)."""

from __future__ import annotations

from pathlib import Path

from . import DatasetKind, register

# data_files with one of these builders as ``path`` are resolved by datasets against the current directory
BUILDERS = ("parquet", "json", "csv", "arrow", "text", "imagefolder", "webdataset", "pandas")


@register("hf")
class HF(DatasetKind):
    """``path`` (hub name, local folder, or a builder such as "parquet" with ``data_files``), ``name``,
    ``split``, ``revision``, ``columns`` (our names -> theirs: image, question, answers required) and
    ``images`` (a second dataset holding the images, joined on image_id)."""

    keys = ("path", "name", "split", "data_files", "revision", "images", "columns")

    def check(self, dc) -> None:
        from ..config.dataset import DATASET_COLUMNS

        if not dc.path:
            raise ValueError("dataset: kind 'hf' needs 'path' (a hub name, a local folder, or a builder "
                             "such as 'parquet' with 'data_files')")
        need = [c for c, req in DATASET_COLUMNS.items() if req and not (c == "image" and dc.images)]
        missing = [c for c in need if c not in dc.columns]
        if missing:
            raise ValueError(f"dataset.columns: kind 'hf' must map {missing} to the dataset's columns "
                             "(our name: their name), e.g. {image: image, question: question, answers: answers}")
        if dc.images is not None:
            allowed = {"path", "name", "split", "data_files", "revision", "columns"}
            if not isinstance(dc.images, dict) or set(dc.images) - allowed:
                raise ValueError(f"dataset.images: expected a mapping with keys from {sorted(allowed)}")
            if "image_id" not in dc.columns:
                raise ValueError("dataset.images: joining the images needs columns.image_id")
            dc.images = dict(dc.images)

    def resolve_paths(self, dc, base, local) -> None:
        """A ``path`` that exists under the config's folder, and ``data_files`` read by a builder; hub
        names and files inside a hub repository stay as they are."""
        for spec in [s for s in (dc.__dict__, dc.images) if s is not None]:
            if spec.get("path") and not Path(spec["path"]).is_absolute() and (base / spec["path"]).exists():
                spec["path"] = local(spec["path"])
            if spec.get("data_files") is not None and (spec.get("path") or dc.path) in BUILDERS:
                spec["data_files"] = _map_files(spec["data_files"], local)

    def load(self, dc, cache_file=None, bad=None):
        from ..sources import load_hf

        return load_hf(dc, cache_file, bad)


def _map_files(files, fn):
    if isinstance(files, str):
        return fn(files)
    if isinstance(files, dict):
        return {k: _map_files(v, fn) for k, v in files.items()}
    return [fn(f) for f in files]
