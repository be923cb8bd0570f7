"""The runtime every path shares, Ray-agnostic where it can be: pipeline config, output records, the moderation
worker (one operator chain for lists and tables), the delivery loop (poll -> moderate -> sink -> flush -> commit),
metrics, job summaries and the library API re-exported at the package root.
"""
