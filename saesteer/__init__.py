"""saesteer: find, bypass and anchor the refusal mechanism of chat LLMs.

Refusal directions (Arditi et al. 2024) and sparse-autoencoder features
(O'Brien et al. 2024) as one toolkit: extract, rank, steer, anchor, attack.
"""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
