"""hardneg: hard-negative mining for contrastive embedding models at cluster scale."""

__version__ = "0.1.0"
