"""Flow and HiFi-GAN decoder of a ``VitsModel`` as ONNX, exported once and cached.

The frontend (text encoder, duration predictor, expansion) stays on torch:
it runs once per segment and its output length depends on the data. The flow
and the decoder run many times per segment on windows of varying length,
where onnxruntime is as fast as torch for the decoder, about twice as fast
for the flow, and has no first-call cost per new window length (torch's
oneDNN convolutions compile per shape); see docs/vits.md for the figures.

``OnnxStages`` opens the two sessions (``threads`` intra-op threads each,
no spinning, as Piper's) and runs them on numpy windows.

Layout: ``<cache_dir>/vits-<sha256>/{flow,decoder}.onnx`` and ``meta.json``.
The key hashes the weights file and ``config.json``; an entry is written to a
temporary folder and renamed into place, so a crash never leaves half an
entry that later starts would trust.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch

from engine.cache_entry import timed, write_atomically
from engine.piper_voice import session_options
from engine.vits_files import VitsFiles

log = logging.getLogger("engine")
Float32Array = npt.NDArray[np.float32]

EXPORT_FORMAT = 1
OPSET = 17
STAGES = ("flow", "decoder")
EXAMPLE_FRAMES = 64


@dataclass(frozen=True)
class ExportFiles:
    """Paths of the exported stages; ``from_cache`` is False right after an export."""

    flow: Path
    decoder: Path
    speaker_input: bool  # both stages take a ``speaker`` input
    from_cache: bool


@dataclass
class OnnxStages:
    """The exported flow and decoder on onnxruntime: float32 numpy in, numpy out."""

    flow_session: ort.InferenceSession
    decoder_session: ort.InferenceSession
    files: ExportFiles

    @classmethod
    def open(
        cls, model: Any, files: VitsFiles, cache_dir: Path, threads: int, timings: dict[str, float]
    ) -> OnnxStages:
        """Hash, export (or reuse the export) and open both sessions with ``threads`` threads.

        A cache entry whose sessions cannot be opened is exported again, once.
        """
        digest = timed(timings, "hash", lambda: checkpoint_digest(files))
        exported = timed(timings, "export", lambda: load_or_export(model, cache_dir, digest))
        options = session_options(threads)

        def open_both(e: ExportFiles) -> OnnxStages:
            flow, decoder = (
                ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                for path in (e.flow, e.decoder)
            )
            return cls(flow, decoder, e)

        try:
            stages: OnnxStages = timed(timings, "sessions", lambda: open_both(exported))
        except Exception as exc:  # a damaged cache entry: export again, once
            if not exported.from_cache:
                raise
            log.warning("engine: %s: cached export unusable (%s); exporting again", files.name, exc)
            exported = load_or_export(model, cache_dir, digest, refresh=True)
            stages = timed(timings, "sessions", lambda: open_both(exported))
        return stages

    def flow(self, prior: Float32Array, speaker: Float32Array | None) -> Float32Array:
        """Reverse flow on a window ``[1, flow_size, frames]``."""
        out = self.flow_session.run(None, self._feed(prior, speaker))[0]
        return np.asarray(out, dtype=np.float32)

    def decoder(self, flowed: Float32Array, speaker: Float32Array | None) -> Float32Array:
        """HiFi-GAN on a window ``[1, flow_size, frames]``: ``frames * hop`` samples."""
        out = self.decoder_session.run(None, self._feed(flowed, speaker))[0]
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def _feed(self, latents: Float32Array, speaker: Float32Array | None) -> dict[str, Any]:
        feed: dict[str, Any] = {"latents": np.ascontiguousarray(latents)}
        if self.files.speaker_input and speaker is not None:
            feed["speaker"] = speaker
        return feed


def checkpoint_digest(files: VitsFiles) -> str:
    """SHA-256 over ``config.json`` then the weights file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    for path in (files.config, files.weights):
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def load_or_export(
    model: Any, cache_dir: Path, digest: str, *, refresh: bool = False
) -> ExportFiles:
    """The exported stages of ``model`` (eval mode, weight norm baked), exporting on a miss.

    A missing, damaged or old-format entry is a miss; ``refresh`` forces one.
    Export errors (an architecture the tracer cannot follow) propagate.
    """
    entry = cache_dir / f"vits-{digest}"
    speaker = model.config.num_speakers > 1 and model.config.speaker_embedding_size > 0
    if not refresh:
        try:
            meta = json.loads((entry / "meta.json").read_text())
            if (
                meta["format"] == EXPORT_FORMAT
                and meta["speaker_input"] == speaker
                and all((entry / f"{s}.onnx").is_file() for s in STAGES)
            ):
                return _files(entry, speaker, from_cache=True)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a miss: export below

    def fill(folder: Path) -> None:
        _export(model, folder, speaker)
        meta = {"format": EXPORT_FORMAT, "speaker_input": speaker, "torch": torch.__version__}
        (folder / "meta.json").write_text(json.dumps(meta, indent=2))

    write_atomically(cache_dir, entry, fill, prefix=".export-")
    return _files(entry, speaker, from_cache=False)


class _Flow(torch.nn.Module):
    """Reverse flow with an all-ones mask: what ``VitsModel`` runs for a batch of one."""

    def __init__(self, flow: torch.nn.Module) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, latents: torch.Tensor, speaker: torch.Tensor | None = None) -> torch.Tensor:
        mask = torch.ones_like(latents[:, :1, :])
        out: torch.Tensor = self.flow(latents, mask, speaker, reverse=True)
        return out


def _export(model: Any, folder: Path, speaker: bool) -> None:
    c = model.config
    latents = torch.zeros((1, int(c.flow_size), EXAMPLE_FRAMES))
    inputs: tuple[torch.Tensor, ...] = (latents,)
    names = ["latents"]
    if speaker:
        inputs += (torch.zeros((1, int(c.speaker_embedding_size), 1)),)
        names.append("speaker")
    for stage, module, output in (
        ("flow", _Flow(model.flow), "flowed"),
        ("decoder", model.decoder, "audio"),
    ):
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter
            torch.onnx.export(
                module,
                inputs,
                str(folder / f"{stage}.onnx"),
                input_names=names,
                output_names=[output],
                dynamic_axes={"latents": {2: "frames"}, output: {2: "length"}},
                opset_version=OPSET,
                dynamo=False,
            )


def _files(entry: Path, speaker: bool, *, from_cache: bool) -> ExportFiles:
    return ExportFiles(
        flow=entry / "flow.onnx",
        decoder=entry / "decoder.onnx",
        speaker_input=speaker,
        from_cache=from_cache,
    )
