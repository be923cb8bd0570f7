"""Pipeline: config loading, CLI, and (with Ray installed) the batch, stream and serving jobs."""
