"""Image/text encoders (backbones): what turns pixels and class texts into embeddings.

A new model family goes here: one module per family (``transformers_clip``: transformers ``CLIPModel``
checkpoints, incl. the bundled reference models), offline tokenizer/vocabulary helpers (``clip_vocab``) and the
writer of small checkpoints used by tests and reference training (``checkpoint``). Nothing outside this package
touches the model classes of transformers (or other model libraries).
"""
