"""A tiny, randomly initialised transformers VITS checkpoint, built on the spot.

It has the architecture of an MMS-TTS model (relative-attention text encoder,
stochastic duration predictor, residual coupling flow, HiFi-GAN) at a few
thousand parameters, and is written with ``save_pretrained`` exactly as a
real checkpoint folder is, so the tests and ``engine.vits_bench`` exercise the
real loading path with no download. It speaks noise, 64 samples per frame at
16 kHz, about 6 frames per token. Its receptive fields: flow 8 frames,
decoder 6.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers.models.vits.configuration_vits import VitsConfig
from transformers.models.vits.modeling_vits import VitsModel
from transformers.models.vits.tokenization_vits import VitsTokenizer
from transformers.utils import logging as transformers_logging

VOCAB = ["<pad>", " ", "'", "-", *string.ascii_lowercase, "<unk>"]


def tiny_config(*, num_speakers: int = 1) -> VitsConfig:
    """An MMS-shaped config scaled down to run in milliseconds."""
    return VitsConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        window_size=2,
        ffn_dim=32,
        flow_size=8,
        spectrogram_bins=9,
        upsample_initial_channel=16,
        upsample_rates=[8, 8],
        upsample_kernel_sizes=[16, 16],
        resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1, 3]],
        prior_encoder_num_flows=2,
        prior_encoder_num_wavenet_layers=2,
        posterior_encoder_num_wavenet_layers=1,
        duration_predictor_filter_channels=16,
        duration_predictor_num_flows=2,
        duration_predictor_flow_bins=4,
        depth_separable_num_layers=2,
        num_speakers=num_speakers,
        speaker_embedding_size=8 if num_speakers > 1 else 0,
        sampling_rate=16000,
        speaking_rate=0.25,  # tokens last several frames, so speed visibly scales them
        pad_token_id=0,
    )


def build_tiny_vits(
    folder: Path,
    *,
    seed: int = 20240601,
    language: str = "eng",
    is_uroman: bool = False,
    num_speakers: int = 1,
) -> Path:
    """Write a tiny checkpoint (config, weights, tokenizer) into ``folder``; return it."""
    folder.mkdir(parents=True, exist_ok=True)
    quiet: Any = transformers_logging.disable_progress_bar
    quiet()
    torch.manual_seed(seed)
    model: Any = VitsModel(tiny_config(num_speakers=num_speakers))
    model.save_pretrained(str(folder))
    with tempfile.TemporaryDirectory() as tmp:
        vocab = Path(tmp) / "vocab.json"
        vocab.write_text(json.dumps({symbol: i for i, symbol in enumerate(VOCAB)}))
        tokenizer = VitsTokenizer(
            str(vocab),
            language=language,
            add_blank=True,
            normalize=True,
            phonemize=False,
            is_uroman=is_uroman,
        )
        tokenizer.save_pretrained(str(folder))
    return folder
