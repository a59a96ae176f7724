"""The interface layer: the ``interp`` command line and the figure code.

Nothing in ``interp``'s core imports this package; it imports the core, ``circuits`` and ``probes``.
The console script, the app and notebooks use it.
"""
