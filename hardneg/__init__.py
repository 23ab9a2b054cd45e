"""hardneg: hard-negative mining for contrastive embedding models at cluster scale.

Example::

    from hardneg import mine_hard_negatives     # sentence-transformers' signature, run as a hardneg round
    triplets = mine_hard_negatives(pairs, model, num_negatives=5, relative_margin=0.05)
"""

from hardneg.api import embed, mine_hard_negatives, remine, run

__version__ = "0.1.0"
__all__ = ["embed", "mine_hard_negatives", "remine", "run"]
