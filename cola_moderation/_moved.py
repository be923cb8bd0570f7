"""Import paths from before the layout step (2026-12-03) keep working: ``cola_moderation.pipeline.config`` is
``cola_moderation.pipeline.runtime.config``, and so on for every module that moved. Importing an old path gives the
very module object of the new one (so ``isinstance`` and Ray's pickles agree) and a ``DeprecationWarning`` naming the
new path. Installed by ``import cola_moderation``; nothing in the project imports the old paths.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

MOVED: dict[str, str] = {  # old -> new, relative to cola_moderation (packages map their submodules too)
    # operators.detector was a module and is now a package: the package re-exports the module's names
    "operators.backbone": "operators.backbones.transformers_clip",
    "operators.checkpoint": "operators.backbones.checkpoint",
    "operators.clip_vocab": "operators.backbones.clip_vocab",
    "operators.zeroshot": "operators.defences.zeroshot",
    "operators.text_bank": "operators.defences.text_bank",
    "operators.cola": "operators.defences.cola.scorer",
    "operators.views": "operators.defences.cola.views",
    "operators.subspace": "operators.defences.cola.subspace",
    "operators.optimal_transport": "operators.defences.cola.transport",
    "operators.calibration": "operators.detector.calibration",
    "operators.attacks": "pipeline.research.attacks",
    "connectors.kafka_source": "connectors.kafka.source",
    "connectors.kafka_sink": "connectors.kafka.sink",
    "connectors.kafka_transactions": "connectors.kafka.transactions",
    "connectors.kafka_admin": "connectors.kafka.admin",
    "connectors.parquet_source": "connectors.parquet.source",
    "connectors.parquet_sink": "connectors.parquet.sink",
    "connectors.image_files": "connectors.parquet.image_files",
    "connectors.broker": "connectors.local.broker",
    "connectors.kafka_tools": "connectors.local.kafka_tools",
    "connectors.loop": "pipeline.runtime.delivery",
    "pipeline.config": "pipeline.runtime.config",
    "pipeline.ray_config": "pipeline.runtime.ray_config",
    "pipeline.records": "pipeline.runtime.records",
    "pipeline.worker": "pipeline.runtime.worker",
    "pipeline.metrics": "pipeline.runtime.metrics",
    "pipeline.summary": "pipeline.runtime.summary",
    "pipeline.library": "pipeline.runtime.library",
    "pipeline.schemas": "pipeline.runtime.schemas",
    "pipeline.batch_job": "pipeline.jobs.batch",
    "pipeline.stream_job": "pipeline.jobs.stream",
    "pipeline.http_inputs": "pipeline.jobs.http_inputs",
    "pipeline.http_guard": "pipeline.jobs.http_guard",
    "pipeline.ray_runtime": "pipeline.jobs.ray_runtime",
    "pipeline.preflight": "pipeline.jobs.preflight",
    "pipeline.fashion_mnist": "pipeline.research.fashion_mnist",
    "pipeline.finetune": "pipeline.research.finetune",
    "pipeline.reference_training": "pipeline.research.reference_training",
    "pipeline.evaluation": "pipeline.research.evaluation",
    "pipeline.commands": "pipeline.cli.commands",
    "pipeline.demo": "pipeline.cli.demo",
}


def new_name(fullname: str) -> str | None:
    """The current name of a pre-layout module path, or ``None`` when ``fullname`` did not move."""
    prefix = "cola_moderation."
    if not fullname.startswith(prefix):
        return None
    name = fullname[len(prefix):]
    for old, new in MOVED.items():
        if (name == old or name.startswith(old + ".")) and not (name == new or name.startswith(new + ".")):
            return prefix + new + name[len(old):]
    return None


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        target_name = new_name(fullname)
        if target_name is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, loader_state=target_name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        target = str(spec.loader_state)
        warnings.warn(f"{spec.name} moved to {target}", DeprecationWarning, stacklevel=2)
        return importlib.import_module(target)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module is the new one, already imported."""


def install() -> None:
    """First on ``sys.meta_path``: a moved package's old name must not let the path finder load its files twice
    under old names."""
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Alias())
