"""A model with one optimizer per part, trained with manualopt.

Modules: ``model`` (the ``Model`` and its optimizer settings), ``data`` (generated training data), ``cli`` (the
command line).
"""

__version__ = "0.1.0"
