"""What sessions may touch on disk and how: the path sandbox, the bounded readers built on it
(active files and the agent's tools share them), and the agent's file tools with their registry.

This package sits below :mod:`jidoka.session` and :mod:`jidoka.llm` and imports neither: the shapes
the model and the tools exchange (:class:`~jidoka.tools.spec.ToolCall`,
:class:`~jidoka.tools.spec.ToolSpec`) are defined here and re-exported by :mod:`jidoka.llm.types`.
"""
