"""Bitsmith: the installed namespace. The code lives in the repository's top-level
folders `core/`, `kernels/` and `app/`, installed as `bitsmith.core`, `bitsmith.kernels`
and `bitsmith.app` (see pyproject.toml's package-dir)."""

__version__ = "0.1.0"
