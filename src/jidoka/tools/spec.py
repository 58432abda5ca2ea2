"""The two shapes a tool and a model exchange: the tool described (:class:`ToolSpec`) and the call
the model asks for (:class:`ToolCall`).

They live with the tools, not with the LLM layer, so that the tools need nothing from
:mod:`jidoka.llm` (which runs them); :mod:`jidoka.llm.types` re-exports both as part of the
vocabulary providers speak.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["ToolCall", "ToolSpec"]


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """One call the model asked for. ``arguments`` is the JSON text the model produced (it may
    be invalid JSON: the tool layer reports that back to the model as a tool error)."""

    id: str
    name: str
    arguments: str


class ToolSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A tool as the model sees it: name, description, JSON Schema of its arguments."""

    name: str
    description: str
    parameters: dict[str, Any]
