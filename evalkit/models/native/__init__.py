"""evalkit's native architectures: a config, the sequence mixers (registered on import), the LM."""

from evalkit.models.native.config import FLAVORS, NativeConfig, attention_layers
from evalkit.models.native.mixer import MIXERS, Mixer, register_mixer
from evalkit.models.native import attention, mamba, mamba2  # noqa: F401,E402  (register mixers)
from evalkit.models.native.lm import LMState, NativeLM

__all__ = ["FLAVORS", "MIXERS", "LMState", "Mixer", "NativeConfig", "NativeLM",
           "attention_layers", "register_mixer"]
