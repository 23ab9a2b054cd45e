"""Miners: pure functions over search candidates that return negatives. They know nothing of Ray."""

from hardneg.miners.geo import GEO_REMOVED, GeoResult, haversine_km, km_to_cosine, mine_geographic, unit_vectors
from hardneg.miners.similarity import FILTERS, MiningResult, Ragged, hash_texts, mine_similarity, sort_candidates

__all__ = [
    "FILTERS", "GEO_REMOVED", "GeoResult", "MiningResult", "Ragged", "hash_texts", "haversine_km", "km_to_cosine",
    "mine_geographic", "mine_similarity", "sort_candidates", "unit_vectors",
]
