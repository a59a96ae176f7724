"""Every built-in analysis, registered: importing this module fills ``interp.analysis.ANALYSES``.

The CLI and the app import it; a new analysis adds its module here (or is imported by the user
before use, which registers it just the same).
"""

import circuits.bigram_analysis  # noqa: F401
import circuits.dictionary_analysis  # noqa: F401
import circuits.edge_circuits  # noqa: F401
import interp.layer_redundancy  # noqa: F401
import interp.patching  # noqa: F401
import probes.analysis  # noqa: F401
from interp.analysis import ANALYSES, analysis_of, payload_of

__all__ = ["ANALYSES", "analysis_of", "payload_of"]
