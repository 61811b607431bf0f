"""firstword engine: preloaded voices (Piper, transformers VITS) that stream while decoding.

from engine import Engine
eng = Engine.load()
for chunk in eng.stream("Hello there. How are you?"):
    chunk.audio, chunk.sample_rate
"""

from engine.engine import Engine, SpeechChunk
from engine.voice_files import VoiceLoadError

__all__ = ["Engine", "SpeechChunk", "VoiceLoadError"]
