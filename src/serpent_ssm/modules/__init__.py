"""nn.Modules: the SeRpEnt mixer, the Mamba and S4D backbones, the bidirectional wrapper, the block.

**Mixer protocol** (``modules.protocol``). Every mixer in the library maps ``x (B, L, d_model)``
to ``(B, L, d_model)`` through ``forward(x, mask=None)``, where ``mask (B, L)`` is bool, True =
real element, right padding only; outputs at real positions must not depend on the padding. A
mixer declares what it can do with a recurrent state in ``state_support`` (a ``StateSupport``):
``step`` (``allocate_state(batch, device=None, dtype=None) -> state`` and
``step(x_t, state) -> (y_t, state)`` with ``x_t (B, d_model)``, so that generation costs
constant memory per token) and ``forward_state`` (``forward(x, mask, state=..., return_state=True)``
for processing a long sequence in chunks). A user-written mixer that follows this protocol
works everywhere a built-in one does.
"""

from serpent_ssm.modules.bidirectional import Bidirectional
from serpent_ssm.modules.block import Block
from serpent_ssm.modules.mamba import Mamba
from serpent_ssm.modules.protocol import StateSupport, state_support
from serpent_ssm.modules.s4d import S4D
from serpent_ssm.modules.serpent import SeRpEnt
from serpent_ssm.modules.serpent_config import SeRpEntConfig, SeRpEntOptions

__all__ = [
    "Bidirectional",
    "Block",
    "Mamba",
    "S4D",
    "SeRpEnt",
    "SeRpEntConfig",
    "SeRpEntOptions",
    "StateSupport",
    "state_support",
]
