"""Image/text encoders (backbones): what turns pixels and class texts into embeddings.

Everything outside this package uses the :class:`~.base.Backbone` interface and :func:`~.registry.load_backbone`;
only the family modules touch model classes of transformers (or other model libraries):

* ``base``: the interface, :class:`~.base.ImageGeometry`, pixel normalisation, device/dtype resolution;
* ``registry``: the families and how a checkpoint's files select one; ``sources``: ``model.path`` resolution
  (local directory, ``hf-hub:ORG/NAME``, hub id, ``builtin:``) and safe weight loading;
* ``transformers_clip``, ``openclip`` (+ ``open_clip_format``), ``siglip``: one module per family;
* ``clip_vocab`` (offline CLIP BPE tokenizer) and ``checkpoint`` (small checkpoints for tests, benchmarks and
  reference training).
"""
