"""``cola review``: the human-review console over a quarantine route, and the decisions route it writes.

* :mod:`.items` - the quarantined output records (a ``cola batch`` dataset's ``route=quarantine`` or a Kafka
  quarantine topic) and their images, read back from the records' sources;
* :mod:`.decision_log` - the append-only decisions route (Parquet ``route=decisions`` and/or Kafka
  ``cola.decisions``), idempotent per (id, reviewer), revisions instead of overwrites;
* :mod:`.auth` - bearer tokens, browser sessions, CSRF tokens;
* :mod:`.app` - the Starlette app (HTTP API + a static page, no build step), served by uvicorn;
* :mod:`.dsa` - statements of reasons in the shape of the EU DSA Transparency Database.
"""
