"""The stages of a transformers ``VitsModel``, called one at a time on torch (CPU).

``VitsModel.forward`` runs text encoder -> duration predictor -> latent
expansion -> reverse flow -> HiFi-GAN decoder in one call. ``VitsStages``
runs the same submodules with the same operations in the same order, but
stops after the expansion (``frontend``), so the flow and the decoder can be
run on windows of the latent sequence (see ``engine.chunking``).

Every method enters ``torch.inference_mode()`` itself and leaves it before
returning. Inference mode is thread-local, and a synthesis generator is
resumed on whichever server worker thread is free, so it must never be held
across a ``yield``.

Receptive fields are derived from the config (:func:`receptive_fields`):
for MMS-TTS checkpoints the flow needs 32 frames of context on each side and
the decoder 14; a voice's load verifies them on a probe anyway.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.nn.utils import parametrize
from transformers.models.vits.modeling_vits import VitsModel

from engine.vits_files import VitsFiles
from engine.voice_files import VoiceLoadError

Float32Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Latents:
    """The frontend's output for one segment: prior latents ``[1, flow_size, frames]``."""

    prior: torch.Tensor
    speaker: torch.Tensor | None  # [1, speaker_embedding_size, 1] or None

    @property
    def frames(self) -> int:
        return int(self.prior.shape[-1])


class VitsStages:
    """Frontend, flow and decoder of one loaded ``VitsModel`` (eval mode, float32)."""

    def __init__(self, model: VitsModel, speaker_id: int | None = None) -> None:
        self.model = model
        self.config: Any = model.config
        self.speaker_id = speaker_id if self.config.num_speakers > 1 else None
        self._forward_lock = threading.Lock()

    @property
    def hop(self) -> int:
        """Output samples per latent frame (the decoder's total upsampling)."""
        return math.prod(int(r) for r in self.config.upsample_rates)

    def frontend(
        self,
        ids: list[int],
        *,
        speaking_rate: float,
        noise_scale: float,
        noise_scale_duration: float,
    ) -> Latents:
        """Text encoder, duration predictor and expansion, as ``VitsModel.forward``.

        Noise comes from torch's global generator (as in ``forward``); with
        both noise scales 0 the result is deterministic.
        """
        m, c = self.model, self.config
        with torch.inference_mode():
            input_ids = torch.tensor([ids], dtype=torch.long)
            dtype = m.text_encoder.embed_tokens.weight.dtype
            input_padding_mask = torch.ones_like(input_ids).unsqueeze(-1).to(dtype)
            speaker = self._speaker()
            encoded = m.text_encoder(
                input_ids=input_ids, padding_mask=input_padding_mask, return_dict=True
            )
            hidden_states = encoded.last_hidden_state.transpose(1, 2)
            input_padding_mask = input_padding_mask.transpose(1, 2)
            if c.use_stochastic_duration_prediction:
                log_duration = m.duration_predictor(
                    hidden_states,
                    input_padding_mask,
                    speaker,
                    reverse=True,
                    noise_scale=noise_scale_duration,
                )
            else:
                log_duration = m.duration_predictor(hidden_states, input_padding_mask, speaker)
            length_scale = 1.0 / speaking_rate
            duration = torch.ceil(torch.exp(log_duration) * input_padding_mask * length_scale)
            lengths = torch.clamp_min(torch.sum(duration, [1, 2]), 1).long()
            # From here on exactly forward()'s expansion, batch of one.
            indices = torch.arange(int(lengths.max()), dtype=lengths.dtype)
            output_padding_mask = indices.unsqueeze(0) < lengths.unsqueeze(1)
            output_padding_mask = output_padding_mask.unsqueeze(1).to(input_padding_mask.dtype)
            attn_mask = torch.unsqueeze(input_padding_mask, 2) * torch.unsqueeze(
                output_padding_mask, -1
            )
            batch_size, _, output_length, input_length = attn_mask.shape
            cum_duration = torch.cumsum(duration, -1).view(batch_size * input_length, 1)
            positions = torch.arange(output_length, dtype=duration.dtype)
            valid = (positions.unsqueeze(0) < cum_duration).to(attn_mask.dtype)
            valid = valid.view(batch_size, input_length, output_length)
            padded = valid - torch.nn.functional.pad(valid, [0, 0, 1, 0, 0, 0])[:, :-1]
            attn = padded.unsqueeze(1).transpose(2, 3) * attn_mask
            means = torch.matmul(attn.squeeze(1), encoded.prior_means).transpose(1, 2)
            log_variances = torch.matmul(attn.squeeze(1), encoded.prior_log_variances)
            log_variances = log_variances.transpose(1, 2)
            prior = means + torch.randn_like(means) * torch.exp(log_variances) * noise_scale
        return Latents(prior, speaker)

    def flow(self, prior: torch.Tensor, speaker: torch.Tensor | None) -> torch.Tensor:
        """Reverse flow on a window of prior latents ``[1, flow_size, frames]``."""
        with torch.inference_mode():
            mask = torch.ones((1, 1, prior.shape[-1]), dtype=prior.dtype)
            out: torch.Tensor = self.model.flow(prior, mask, speaker, reverse=True)
            return out

    def decoder(self, latents: torch.Tensor, speaker: torch.Tensor | None) -> Float32Array:
        """HiFi-GAN on a window of flowed latents; ``frames * hop`` float32 samples."""
        with torch.inference_mode():
            waveform = self.model.decoder(latents, speaker)
            return np.asarray(waveform.reshape(-1).numpy(), dtype=np.float32)

    def forward(self, ids: list[int], speaking_rate: float, *, noise: bool) -> Float32Array:
        """``VitsModel.forward(input_ids).waveform``, noise as configured or off.

        transformers 4.x reads the speaking rate and noise scales only from
        the model's attributes, so they are set for the call and restored,
        under a lock (this is the reference and the fallback, not the
        streaming path).
        """
        m = self.model
        with self._forward_lock:
            saved = m.speaking_rate, m.noise_scale, m.noise_scale_duration
            m.speaking_rate = speaking_rate
            if not noise:
                m.noise_scale, m.noise_scale_duration = 0.0, 0.0
            try:
                with torch.inference_mode():
                    out = m(
                        input_ids=torch.tensor([ids], dtype=torch.long),
                        speaker_id=self.speaker_id,
                    )
                    return np.asarray(out.waveform.reshape(-1).numpy(), dtype=np.float32)
            finally:
                m.speaking_rate, m.noise_scale, m.noise_scale_duration = saved

    def one_shot(self, ids: list[int], speaking_rate: float) -> Float32Array:
        """``VitsModel.forward(input_ids).waveform`` with noise off: the reference."""
        return self.forward(ids, speaking_rate, noise=False)

    def _speaker(self) -> torch.Tensor | None:
        if self.speaker_id is None:
            return None
        embedding: torch.Tensor = self.model.embed_speaker(torch.tensor([self.speaker_id]))
        return embedding.unsqueeze(-1)


def receptive_fields(config: Any) -> tuple[int, int]:
    """One-sided receptive fields ``(flow, decoder)`` in latent frames, from the config.

    Flow: each coupling layer's WaveNet stacks convolutions of kernel ``k``
    and dilation ``rate**i``, each reaching ``(k - 1) * dilation / 2`` frames;
    coupling layers compose. Decoder: walk HiFi-GAN from the output back to
    its input, adding each convolution's reach at its own sample rate and
    dividing by each upsampling stride. MMS-TTS: flow 32, decoder 14.
    """
    k, rate = int(config.wavenet_kernel_size), int(config.wavenet_dilation_rate)
    layers = range(int(config.prior_encoder_num_wavenet_layers))
    per_layer = sum((k * rate**i - rate**i) // 2 for i in layers)
    flow = int(config.prior_encoder_num_flows) * per_layer
    resblock = max(
        sum((kernel * d - d) // 2 + (kernel - 1) // 2 for d in dilations)
        for kernel, dilations in zip(
            config.resblock_kernel_sizes, config.resblock_dilation_sizes, strict=True
        )
    )
    reach = 3  # conv_post, kernel 7, at the output rate
    for stride, kernel in reversed(
        list(zip(config.upsample_rates, config.upsample_kernel_sizes, strict=True))
    ):
        padding = (kernel - stride) // 2
        reach = math.ceil((reach + resblock + max(padding, kernel - 1 - padding)) / stride)
    return flow, reach + 3  # conv_pre, kernel 7, at the frame rate


def remove_weight_norm(model: torch.nn.Module) -> int:
    """Bake weight-norm parametrizations into plain weights; returns how many.

    The flow's WaveNet layers recompute ``g * v / |v|`` on every call; baking
    stores exactly that value once (so outputs are unchanged) and saves ~10 %
    of each flow call.
    """
    baked = 0
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):  # type: ignore[union-attr,operator]
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
                baked += 1
    return baked


def load_model(files: VitsFiles) -> Any:
    """``VitsModel.from_pretrained`` from the folder only, float32, eval, weight norm baked.

    Raises :class:`VoiceLoadError` for unreadable weights and for weights that
    do not fit ``config.json`` (transformers would initialise those randomly).
    """
    from transformers.utils import logging as transformers_logging

    quiet: Any = transformers_logging.disable_progress_bar
    quiet()  # no progress bars in the server log

    try:
        loaded: Any = VitsModel.from_pretrained(
            str(files.folder), local_files_only=True, output_loading_info=True
        )
    except Exception as exc:
        raise VoiceLoadError(f"{files.weights}: cannot load the model weights: {exc}") from exc
    model, info = loaded
    # The posterior encoder is only used in training; some checkpoints leave it out.
    missing = [
        f"missing {k}" for k in info["missing_keys"] if not k.startswith("posterior_encoder.")
    ]
    mismatched = [
        f"wrong shape {k[0] if isinstance(k, tuple) else k}" for k in info["mismatched_keys"]
    ]
    if missing or mismatched:
        raise VoiceLoadError(
            f"{files.weights}: weights do not match config.json: "
            + ", ".join(sorted(missing)[:5] + sorted(mismatched)[:5])
        )
    model = model.float().eval()
    remove_weight_norm(model)
    return model
