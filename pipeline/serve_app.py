"""Stable import path of the Serve application (``cola_moderation.pipeline.serve_app:app_builder``, used by Serve
configs and KubeRay manifests); the implementation is :mod:`cola_moderation.pipeline.jobs.serve_app`."""

from cola_moderation.pipeline.jobs.serve_app import app_builder

__all__ = ["app_builder"]
