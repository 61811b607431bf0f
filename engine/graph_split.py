"""Split a Piper VITS ONNX graph into frontend, flow and vocoder stages.

A Piper voice is one ONNX graph: text encoder (``/enc_p``) and duration
predictor (``/dp``) followed by latent expansion, then the reverse normalising
flow (``/flow``) and the HiFi-GAN decoder (``/dec``). The last two are
convolutional with a finite receptive field, so they can run on windows of
the latent. We cut the graph by *structure*, not by tensor names:

- vocoder nodes: every node downstream of a ``/dec`` node (plus those nodes);
- flow nodes: every node downstream of a ``/flow`` node that is not a vocoder node;
- frontend nodes: all the rest.

The inputs of a stage are the tensors it consumes that an earlier stage
produces (initializers excluded). Each stage becomes a standalone model via
``onnx.utils.Extractor``. This module does no file I/O; see ``split_cache``.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
import onnx.utils

FLOW_PREFIX = "/flow"
VOCODER_PREFIX = "/dec"


class GraphSplitError(ValueError):
    """The graph does not have the structure of a Piper VITS voice."""


@dataclass(frozen=True)
class SplitGraphs:
    """The three stage models and the tensor names that connect them.

    ``frontend`` takes the original graph inputs and produces
    ``frontend_outputs``; ``flow`` takes ``flow_inputs`` and produces
    ``flow_outputs``; ``vocoder`` takes ``vocoder_inputs`` and produces the
    original audio output ``audio_output``.
    """

    frontend: onnx.ModelProto
    flow: onnx.ModelProto
    vocoder: onnx.ModelProto
    frontend_outputs: tuple[str, ...]
    flow_inputs: tuple[str, ...]
    flow_outputs: tuple[str, ...]
    vocoder_inputs: tuple[str, ...]
    audio_output: str


def _downstream(graph: onnx.GraphProto, seeds: list[int]) -> set[int]:
    """Indices of ``seeds`` and every node that (transitively) consumes their outputs."""
    consumers: dict[str, list[int]] = {}
    for index, node in enumerate(graph.node):
        for name in node.input:
            consumers.setdefault(name, []).append(index)
    found = set(seeds)
    stack = list(seeds)
    while stack:
        for name in graph.node[stack.pop()].output:
            for consumer in consumers.get(name, []):
                if consumer not in found:
                    found.add(consumer)
                    stack.append(consumer)
    return found


def _boundary(graph: onnx.GraphProto, stage: set[int], producers: set[int]) -> list[str]:
    """Tensors consumed by ``stage`` nodes and produced by ``producers`` nodes, in order."""
    produced_by = {out: i for i, node in enumerate(graph.node) for out in node.output}
    names: list[str] = []
    for index in sorted(stage):
        for name in graph.node[index].input:
            if name in produced_by and produced_by[name] in producers and name not in names:
                names.append(name)
    return names


def split_piper_graph(model: onnx.ModelProto) -> SplitGraphs:
    """Cut ``model`` into frontend, flow and vocoder models.

    Raises :class:`GraphSplitError` when the graph has no ``/flow`` or ``/dec``
    nodes, more than one output, or a stage boundary that cannot be cut.
    """
    graph = model.graph
    if len(graph.output) != 1:
        raise GraphSplitError(f"expected one graph output, found {len(graph.output)}")
    flow_seeds = [i for i, n in enumerate(graph.node) if n.name.startswith(FLOW_PREFIX)]
    vocoder_seeds = [i for i, n in enumerate(graph.node) if n.name.startswith(VOCODER_PREFIX)]
    if not flow_seeds or not vocoder_seeds:
        raise GraphSplitError(f"no nodes named {FLOW_PREFIX}* or {VOCODER_PREFIX}* in the graph")
    vocoder = _downstream(graph, vocoder_seeds)
    flow = _downstream(graph, flow_seeds) - vocoder
    frontend = set(range(len(graph.node))) - flow - vocoder
    if any(graph.node[i].name.startswith(FLOW_PREFIX) for i in vocoder):
        raise GraphSplitError("a /flow node depends on the vocoder: the graph is not a VITS chain")

    flow_inputs = _boundary(graph, flow, frontend)
    vocoder_inputs = _boundary(graph, vocoder, frontend | flow)
    flow_outputs = [n for n in vocoder_inputs if n in _produced(graph, flow)]
    frontend_outputs = list(flow_inputs)
    frontend_outputs += [
        n for n in vocoder_inputs if n not in flow_outputs and n not in flow_inputs
    ]
    if not flow_inputs or not flow_outputs:
        raise GraphSplitError("could not find the tensors between frontend, flow and vocoder")

    graph_inputs = [i.name for i in graph.input]
    audio_output = graph.output[0].name
    extractor = onnx.utils.Extractor(model)
    try:
        return SplitGraphs(
            frontend=extractor.extract_model(graph_inputs, frontend_outputs),
            flow=extractor.extract_model(flow_inputs, flow_outputs),
            vocoder=extractor.extract_model(vocoder_inputs, [audio_output]),
            frontend_outputs=tuple(frontend_outputs),
            flow_inputs=tuple(flow_inputs),
            flow_outputs=tuple(flow_outputs),
            vocoder_inputs=tuple(vocoder_inputs),
            audio_output=audio_output,
        )
    except Exception as exc:  # onnx raises a variety of errors for uncuttable graphs
        raise GraphSplitError(f"extracting the stages failed: {exc}") from exc


def _produced(graph: onnx.GraphProto, stage: set[int]) -> set[str]:
    return {out for i in stage for out in graph.node[i].output}
