"""Miners: pure functions over search candidates that return negatives. They know nothing of Ray."""

from hardneg.miners.batches import BatchPlan, compose_batches, place_conflicts, together_share
from hardneg.miners.geo import GEO_REMOVED, GeoResult, geographic_negatives, haversine_km, km_to_cosine, mine_geographic, unit_vectors
from hardneg.miners.mixed import drop_same_place, merge_negatives
from hardneg.miners.similarity import FILTERS, MiningResult, Ragged, hash_texts, mine_similarity, sort_candidates

__all__ = [
    "BatchPlan", "FILTERS", "GEO_REMOVED", "GeoResult", "MiningResult", "Ragged", "hash_texts", "haversine_km", "km_to_cosine",
    "compose_batches", "drop_same_place", "geographic_negatives", "merge_negatives", "mine_geographic", "mine_similarity", "place_conflicts", "sort_candidates",
    "together_share", "unit_vectors",
]
