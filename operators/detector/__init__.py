"""The adversarial-upload detector: its score (``score``) and its calibration file kept beside the model
(``calibration``: format, lookup and application; fitting lives in :mod:`cola_moderation.pipeline.research`).
"""
