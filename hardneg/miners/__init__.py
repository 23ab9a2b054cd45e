"""Miners: pure functions over search candidates that return negatives. They know nothing of Ray."""

from hardneg.miners.similarity import FILTERS, MiningResult, Ragged, hash_texts, mine_similarity, sort_candidates

__all__ = ["FILTERS", "MiningResult", "Ragged", "hash_texts", "mine_similarity", "sort_candidates"]
