"""Every analysis, registered: importing this module fills ``interp.analysis.ANALYSES``.

The rule: each analysis lives in a module whose name ends in ``_analysis`` in the ``interp``,
``circuits`` or ``probes`` package, and registers itself on import. This module imports all of
them, so a new analysis needs no line anywhere else. The CLI and the app import it.
"""

import importlib
import pkgutil

import circuits
import interp
import probes
from interp.analysis import ANALYSES, analysis_of, payload_of

MODULES = sorted(f"{package.__name__}.{info.name}" for package in (interp, circuits, probes)
                 for info in pkgutil.iter_modules(package.__path__) if info.name.endswith("_analysis"))
for _name in MODULES:
    importlib.import_module(_name)

__all__ = ["ANALYSES", "MODULES", "analysis_of", "payload_of"]
