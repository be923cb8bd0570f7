"""COLA (NeurIPS 2025): project image embeddings onto the class-text subspace (``subspace``), build N views of each
image (``views``), and score classes by entropic optimal transport between views and class texts (``transport``,
``scorer``). See ``shared/COLA.md`` / docs/robustness for the method and its measured figures.
"""
