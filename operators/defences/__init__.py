"""Scoring methods ("defences") applied to a backbone's embeddings: plain zero-shot CLIP, COLA and the cascade.

``text_bank`` (encoded class texts) and ``zeroshot`` (plain CLIP scores) are shared by every method; COLA's views,
text subspace, optimal transport and scorer live in :mod:`cola_moderation.operators.defences.cola`. The registry of
method names is :mod:`cola_moderation.operators.defences.registry`.
"""
