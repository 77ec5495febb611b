"""Refrain: find protected recordings — copies and derivatives — inside uploaded audio.

The library API is :class:`refrain.api.Refrain`; the ``refrain`` CLI and the
``service`` HTTP API are thin shells over it. This file imports nothing, so that
``refrain.config`` or ``refrain.synth`` can be used without loading the whole stack.
"""

__version__ = "0.1.0"
