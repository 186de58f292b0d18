"""ressearch: neural-architecture search for small residual networks."""

from __future__ import annotations

from ressearch.counting import Counts, count
from ressearch.errors import UserError
from ressearch.export import load
from ressearch.model import ResNet, build_model
from ressearch.spec import PRESETS, ResNetSpec, load_spec

__version__ = "0.1.0"

__all__ = [
           "PRESETS",
           "Counts",
           "ResNet",
           "ResNetSpec",
           "UserError",
           "__version__",
           "build_model",
           "count",
           "load",
           "load_spec",
]
