"""NIXL's ``nixl.logging.get_logger``: a standard-library logger."""

from __future__ import annotations

import logging as _logging


def get_logger(name: str) -> _logging.Logger:
    return _logging.getLogger(name)
