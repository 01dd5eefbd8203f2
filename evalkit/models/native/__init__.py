"""evalkit's native architectures: a config, the sequence mixers (registered on import), the LM."""

from evalkit.models.native.config import FLAVORS, PATTERN_LETTERS, NativeConfig, attention_layers
from evalkit.models.native.mixer import MIXERS, Mixer, register_mixer
from evalkit.models.native import (attention, gated_deltanet, mamba, mamba2, s4d,  # noqa: F401,E402
                                   swa)  # (register mixers)
from evalkit.models.native.lm import LMState, NativeLM

__all__ = ["FLAVORS", "MIXERS", "PATTERN_LETTERS", "LMState", "Mixer", "NativeConfig", "NativeLM",
           "attention_layers", "register_mixer"]
