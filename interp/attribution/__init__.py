"""Attribution patching (AtP, AtP*), exact verification of its top nodes, and the bound on what it missed."""

from interp.attribution.atp import METHODS, attribution_patching
from interp.attribution.verification import diagnose, verify_top

__all__ = ["METHODS", "attribution_patching", "diagnose", "verify_top"]
