"""The ``torch.library`` custom operators (``torch.ops.tiledcorr.*``) and their one autograd registration.

Every public entry point calls these operators, in eager and compiled code
alike; importing this package registers them (and the strategies they run).
"""

from .. import strategies  # noqa: F401  (registers the strategies the operators run)
from . import correlate, lookup, reduce  # noqa: F401  (registers the operators)
