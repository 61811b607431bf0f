"""On-disk cache of split voice graphs, keyed by the voice file's SHA-256.

Layout: ``<cache_dir>/<sha256>/{frontend,flow,vocoder}.onnx`` and
``meta.json`` (tensor names between the stages and the split format version).
A cache entry is written to a temporary folder and renamed into place, so a
crash mid-write never leaves a half entry that later starts would trust.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx.shape_inference

from engine.cache_entry import write_atomically
from engine.graph_split import SplitGraphs, split_piper_graph

log = logging.getLogger("engine")
SPLIT_FORMAT = 1
STAGES = ("frontend", "flow", "vocoder")


@dataclass(frozen=True)
class SplitFiles:
    """Paths of the three stage models and the names that connect them."""

    frontend: Path
    flow: Path
    vocoder: Path
    frontend_outputs: tuple[str, ...]
    flow_inputs: tuple[str, ...]
    flow_outputs: tuple[str, ...]
    vocoder_inputs: tuple[str, ...]
    audio_output: str
    from_cache: bool


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """``$FIRSTWORD_CACHE_DIR``, else ``models/cache`` beside the ``engine`` package."""
    env = os.environ.get("FIRSTWORD_CACHE_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "models" / "cache"


def load_or_split(
    model_path: Path, cache_dir: Path, digest: str, *, refresh: bool = False
) -> SplitFiles:
    """Return the split stage files for ``model_path``, splitting on a cache miss.

    A missing, damaged or old-format entry is a miss; ``refresh`` forces one.
    Raises ``GraphSplitError`` when the graph cannot be split, and ``OSError``
    or ``onnx`` errors when the model file cannot be read.
    """
    entry = cache_dir / digest
    if not refresh:
        try:
            meta = json.loads((entry / "meta.json").read_text())
            if meta["format"] == SPLIT_FORMAT and all(
                (entry / f"{s}.onnx").is_file() for s in STAGES
            ):
                return _files(entry, meta, from_cache=True)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, AssertionError):
            pass  # a miss: split again below
    model = onnx.load(str(model_path))
    try:  # the Extractor needs shapes on intermediate tensors; exporters do not always keep them
        model = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:
        log.warning("engine: shape inference failed for %s: %s", model_path.name, exc)
    split = split_piper_graph(model)
    _write_entry(cache_dir, entry, split)
    return _files(entry, json.loads((entry / "meta.json").read_text()), from_cache=False)


def _write_entry(cache_dir: Path, entry: Path, split: SplitGraphs) -> None:
    def fill(folder: Path) -> None:
        for stage in STAGES:
            onnx.save(getattr(split, stage), str(folder / f"{stage}.onnx"))
        meta = {
            "format": SPLIT_FORMAT,
            "frontend_outputs": list(split.frontend_outputs),
            "flow_inputs": list(split.flow_inputs),
            "flow_outputs": list(split.flow_outputs),
            "vocoder_inputs": list(split.vocoder_inputs),
            "audio_output": split.audio_output,
        }
        (folder / "meta.json").write_text(json.dumps(meta, indent=2))

    write_atomically(cache_dir, entry, fill, prefix=".split-")


def _files(entry: Path, meta: dict[str, object], *, from_cache: bool) -> SplitFiles:
    def names(key: str) -> tuple[str, ...]:
        value = meta[key]
        assert isinstance(value, list)
        return tuple(str(v) for v in value)

    return SplitFiles(
        frontend=entry / "frontend.onnx",
        flow=entry / "flow.onnx",
        vocoder=entry / "vocoder.onnx",
        frontend_outputs=names("frontend_outputs"),
        flow_inputs=names("flow_inputs"),
        flow_outputs=names("flow_outputs"),
        vocoder_inputs=names("vocoder_inputs"),
        audio_output=str(meta["audio_output"]),
        from_cache=from_cache,
    )
