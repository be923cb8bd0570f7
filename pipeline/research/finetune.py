"""Adversarial fine-tuning of a CLIP image tower: TeCoA (supervised) and FARE (label-free).

* **TeCoA** (Mao et al., ICLR 2023): minimise the cross-entropy of the zero-shot logits of PGD-perturbed images
  against the frozen class text embeddings of the config's taxonomy (labels x synonyms x templates, averaged as
  :class:`~cola_moderation.operators.defences.zeroshot.ZeroShotClassifier` does); the PGD maximises the same loss.
* **FARE** (Schlarmann et al., ICML 2024): minimise ``||f(x_adv) - f0(x)||^2`` where ``f0`` is the frozen original
  image encoder (projected, unnormalised embedding) and ``x_adv`` maximises that distance in the eps ball. No labels.

Only the backbone's image tower (:meth:`Backbone.trainable_image_tower`) trains; the text tower, the logit scale and
the tokenizer files are written back unchanged (same dtype, same bytes), so every taxonomy and prompt keeps working.
The output directory is a checkpoint of the base model's own family (transformers CLIP, open_clip or SigLIP;
:meth:`Backbone.save_with_image_tower`) for ``model.path``, with a model card (``README.md``).

A validation slice is cut from the training images (seeded) before training; after every epoch it is scored clean
and under the training attack (PGD with the training eps and steps on the zero-shot cross-entropy when the data has
labels; FARE's embedding-distance attack when it has none) and the best epoch is the one written out. Checkpoints
(image tower + optimiser + history) go to ``OUTPUT/checkpoints/epoch-K.pt``; a resumed run continues after the last
(read with ``torch.load(weights_only=True)``: tensors and plain values only, never pickled code).
"""

from __future__ import annotations

import copy
import logging
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from cola_moderation.operators.backbones.base import Backbone
from cola_moderation.operators.backbones.sources import load_torch_file
from cola_moderation.operators.defences.zeroshot import ZeroShotClassifier
from cola_moderation.operators.errors import ConfigError
from cola_moderation.pipeline.research.attacks import pgd_linf
from cola_moderation.pipeline.research.fashion_mnist import CLASS_NAMES, DEFAULT_ROOT, DatasetError, load_fashion_mnist
from cola_moderation.pipeline.research.training import cosine_lr_factor, random_shift_flip

log = logging.getLogger(__name__)

Method = Literal["tecoa", "fare"]
CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class FinetuneRecipe:
    """Every knob of a fine-tuning run (what the model card records and ``--resume`` checks)."""

    method: Method
    eps: float
    """L-inf radius of the training attack, in pixel units ([0, 1] scale), e.g. 8/255."""
    steps: int
    """PGD steps of the training attack (step size 2.5 eps / steps, uniform random start)."""
    epochs: int
    batch_size: int = 128
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 50
    clean_weight: float = 0.0
    """TeCoA only: weight of the clean-image cross-entropy mixed into the loss (0 = TeCoA as published)."""
    augment: bool = True
    """Random shifts of up to 2 px (zero fill) and left-right flips of the training images."""
    validation_split: float = 0.05
    seed: int = 0
    limit: int | None = None
    """Use the first ``limit`` images of the dataset only (before the validation split)."""

    def __post_init__(self) -> None:
        if self.method not in ("tecoa", "fare"):
            raise ConfigError(f"finetune: --method must be tecoa or fare, got {self.method!r}")
        if not 0 < self.eps <= 1:
            raise ConfigError(f"finetune: --eps must be in (0, 1] (pixel units, e.g. 8/255), got {self.eps}")
        for name in ("steps", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"finetune: {name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.validation_split < 1:
            raise ConfigError(f"finetune: --validation-split must be in (0, 1), got {self.validation_split}")
        if self.limit is not None and self.limit < 2:
            raise ConfigError(f"finetune: --limit must be >= 2, got {self.limit}")
        if self.lr <= 0 or not 0 <= self.clean_weight <= 1:
            raise ConfigError(f"finetune: need lr > 0 and clean_weight in [0, 1], got {self.lr}, {self.clean_weight}")


@dataclass(frozen=True)
class TrainingImages:
    """``pixels`` ``[N, 3, S, S]`` uint8; ``labels`` ``[N]`` int64 into ``label_names``, or ``None`` (unlabeled)."""

    name: str
    pixels: torch.Tensor
    labels: torch.Tensor | None
    label_names: tuple[str, ...]
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def take(self, indices: torch.Tensor) -> TrainingImages:
        labels = None if self.labels is None else self.labels[indices]
        return replace(self, pixels=self.pixels[indices], labels=labels)


def _to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def _resize(pixels: torch.Tensor, size: int) -> torch.Tensor:
    if pixels.shape[-1] == size:
        return pixels
    return F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def load_training_images(spec: str, *, label_names: tuple[str, ...], size: int, method: Method,
                         use_labels: bool = True, image_column: str = "image",
                         label_column: str | None = None) -> TrainingImages:
    """Resolve ``--dataset``: ``fashion-mnist[:DIR]`` (the TRAINING split), a Parquet file (``image_column`` with
    encoded bytes, plus a label column when it has one), a folder of class sub-folders, a ``cola review`` decisions
    dataset (final labels) or a ``cola batch`` output dataset (no labels; see :mod:`.reviewed`). Labels are mapped to
    the taxonomy by name (unknown classes are an error naming them). ``use_labels=False`` drops them (FARE, label-free
    validation). TeCoA on a dataset without labels, and an empty dataset, are :class:`DatasetError`."""
    from cola_moderation.pipeline.research.evaluation.datasets import label_indices, load_image_folder, load_parquet

    data: TrainingImages
    if spec == "fashion-mnist" or spec.startswith("fashion-mnist:"):
        root = spec.partition(":")[2] or DEFAULT_ROOT
        train = load_fashion_mnist("train", root=root)
        labels = label_indices([CLASS_NAMES[int(i)] for i in train.labels], label_names, source="fashion-mnist")
        pixels = _to_uint8(_resize(train.pixels(), size)) if size != 28 else train.images.unsqueeze(1).expand(
            -1, 3, -1, -1).contiguous()
        data = TrainingImages("fashion-mnist:train", pixels, labels, label_names)
    else:
        path = Path(spec)
        from cola_moderation.pipeline.research.reviewed import is_decisions_dataset, is_output_dataset, load_reviewed

        if path.is_dir() and (is_decisions_dataset(path) or is_output_dataset(path)):  # cola review / cola batch
            reviewed = load_reviewed(path, label_names=label_names, size=size, image_column=image_column,
                                     use_labels=use_labels)
            data = TrainingImages(str(path), _to_uint8(reviewed.pixels), reviewed.labels, label_names, reviewed.skipped)
        elif path.is_dir():
            folder = load_image_folder(path, label_names=label_names, size=size)
            data = TrainingImages(str(path), _to_uint8(folder.pixels), folder.labels, label_names, folder.skipped)
        elif path.is_file():
            labelled = use_labels and (method == "tecoa" or _has_label_column(path, label_column))
            data = _load_parquet(path, label_names=label_names, size=size, image_column=image_column,
                                 label_column=label_column, use_labels=labelled, loader=load_parquet)
        else:
            raise DatasetError(f"--dataset {spec!r}: not 'fashion-mnist', a Parquet file, an image folder or a "
                               "decisions / output dataset")
    if not use_labels:
        data = replace(data, labels=None)
    if len(data) == 0:
        raise DatasetError(f"dataset {data.name} has no usable images (skipped: {data.skipped or 'none'})")
    if method == "tecoa" and data.labels is None:
        raise DatasetError(f"dataset {data.name} has no labels; --method tecoa needs a label column "
                           "(label/true_label) or class sub-folders; --method fare trains without labels")
    return data


def _has_label_column(path: Path, label_column: str | None) -> bool:
    import pyarrow.parquet as pq

    from cola_moderation.pipeline.research.evaluation.datasets import LABEL_COLUMNS

    try:
        names = pq.read_schema(path).names
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read Parquet dataset {path}: {exc}") from None
    return any(c in names for c in ((label_column,) if label_column else LABEL_COLUMNS))


def _load_parquet(path: Path, *, label_names: tuple[str, ...], size: int, image_column: str,
                  label_column: str | None, use_labels: bool, loader: Callable[..., Any]) -> TrainingImages:
    if use_labels:
        labelled = loader(path, label_names=label_names, size=size, image_column=image_column,
                          label_column=label_column)
        return TrainingImages(str(path), _to_uint8(labelled.pixels), labelled.labels, label_names, labelled.skipped)
    import pyarrow.parquet as pq

    from cola_moderation.operators.decode import ImageDecoder

    try:
        table = pq.read_table(path, columns=[image_column])
    except (OSError, ValueError, KeyError) as exc:
        raise DatasetError(f"cannot read column {image_column!r} of Parquet dataset {path}: {exc}") from None
    payloads = [p for p in table.column(image_column).to_pylist() if p is not None]
    chunks = []
    with ImageDecoder(size=size) as decoder:
        for start in range(0, len(payloads), 512):
            chunks.append(_to_uint8(decoder.decode(payloads[start : start + 512]).pixels))
    pixels = torch.cat(chunks) if chunks else torch.empty((0, 3, size, size), dtype=torch.uint8)
    skipped = {"no_image": table.num_rows - len(payloads), "undecodable": len(payloads) - len(pixels)}
    return TrainingImages(str(path), pixels, None, label_names, skipped)


def split_validation(data: TrainingImages, fraction: float, *, seed: int) -> tuple[TrainingImages, TrainingImages]:
    """A seeded random ``fraction`` of ``data`` (at least one image) held out for epoch selection."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    count = max(1, round(fraction * len(data)))
    if count >= len(data):
        raise DatasetError(f"dataset {data.name}: {len(data)} image(s) leave nothing to train on after the "
                           f"{fraction:.0%} validation split")
    return data.take(order[count:].sort().values), data.take(order[:count].sort().values)


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    clean_accuracy: float | None
    robust_accuracy: float | None
    adversarial_distance: float
    """Validation: mean ``||f(x_adv) - f0(x)||^2`` under FARE's attack (unlabeled data) or the CE attack."""
    seconds: float

    def score(self) -> float:
        """Higher is better: robust accuracy when there are labels, else minus the adversarial distance."""
        return self.robust_accuracy if self.robust_accuracy is not None else -self.adversarial_distance


@dataclass
class FinetuneResult:
    history: list[EpochRecord]
    best: EpochRecord
    seconds: float
    images_per_second: float
    train_images: int
    validation_images: int


class Finetuner:
    """Holds the model being tuned, the frozen reference tower (FARE) and the frozen zero-shot weights (TeCoA)."""

    def __init__(self, backbone: Backbone, classifier: ZeroShotClassifier | None, recipe: FinetuneRecipe) -> None:
        self.recipe = recipe
        self.device = backbone.device
        self.tower = backbone.trainable_image_tower().to(self.device)
        self.reference = copy.deepcopy(self.tower).eval().requires_grad_(False)
        self.classifier = classifier
        self.trained = [p for p in self.tower.parameters() if p.requires_grad]
        decay = [p for n, p in self.tower.named_parameters() if p.ndim >= 2 and "embedding" not in n]
        no_decay = [p for n, p in self.tower.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr)
        self.step = 0
        self.amp_dtype: torch.dtype | None = None
        if self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    def autocast(self) -> AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        assert self.classifier is not None
        return self.classifier.logits(F.normalize(self.tower(pixels), dim=-1))

    def ce_loss(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return F.cross_entropy(self.logits(pixels), labels, reduction="none")

    def distance_loss(self, pixels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return (self.tower(pixels) - target).pow(2).sum(dim=-1)

    def attack(self, pixels: torch.Tensor, labels: torch.Tensor | None, target: torch.Tensor,
               generator: torch.Generator, *, labelled_loss: bool) -> torch.Tensor:
        recipe = self.recipe
        self.tower.requires_grad_(False)
        try:
            if labelled_loss:
                assert labels is not None
                return pgd_linf(self.ce_loss, pixels, labels, eps=recipe.eps, steps=recipe.steps, generator=generator)
            return pgd_linf(self.distance_loss, pixels, target, eps=recipe.eps, steps=recipe.steps,
                            generator=generator)
        finally:
            self.tower.requires_grad_(True)

    def lr_at(self, step: int, total: int) -> float:
        return self.recipe.lr * cosine_lr_factor(step, warmup=self.recipe.warmup_steps, total=total)

    def train_step(self, pixels: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator,
                   total_steps: int) -> float:
        recipe = self.recipe
        with torch.no_grad(), self.autocast():
            target = self.reference(pixels).float()
        tecoa = recipe.method == "tecoa"
        adversarial = self.attack(pixels, labels, target, generator, labelled_loss=tecoa)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step, total_steps)
        if tecoa:
            assert labels is not None
            loss = self.ce_loss(adversarial, labels).mean()
            if recipe.clean_weight:
                loss = (1 - recipe.clean_weight) * loss + recipe.clean_weight * self.ce_loss(pixels, labels).mean()
        else:
            loss = self.distance_loss(adversarial, target).mean()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.trained, 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        return float(loss.detach())

    def validate(self, data: TrainingImages, *, seed: int, batch_size: int = 250) -> tuple[float | None, float | None,
                                                                                                float]:
        """-> (clean accuracy, robust accuracy under the training attack, mean adversarial embedding distance)."""
        generator = torch.Generator().manual_seed(seed)
        clean = robust = 0
        distance = 0.0
        for start in range(0, len(data), batch_size):
            pixels = data.pixels[start : start + batch_size].to(self.device).float().div(255.0)
            labels = None if data.labels is None else data.labels[start : start + batch_size].to(self.device)
            with torch.no_grad(), self.autocast():
                target = self.reference(pixels).float()
            adversarial = self.attack(pixels, labels, target, generator, labelled_loss=labels is not None)
            with torch.no_grad(), self.autocast():
                distance += float((self.tower(adversarial) - target).pow(2).sum(dim=-1).sum())
                if labels is not None and self.classifier is not None:
                    clean += int((self.logits(pixels).argmax(-1) == labels).sum())
                    robust += int((self.logits(adversarial).argmax(-1) == labels).sum())
        if data.labels is None or self.classifier is None:
            return None, None, distance / len(data)
        return clean / len(data), robust / len(data), distance / len(data)

    def state(self) -> dict[str, Any]:
        return {"tower": {k: v.detach().cpu().clone() for k, v in self.tower.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(), "step": self.step}

    def load_state(self, state: dict[str, Any]) -> None:
        self.tower.load_state_dict(state["tower"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])


def _batches(data: TrainingImages, recipe: FinetuneRecipe, epoch: int,
             device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Generator]]:
    """Seeded per epoch, so a run resumed at an epoch boundary sees the same batches as an uninterrupted one."""
    generator = torch.Generator().manual_seed(recipe.seed * 100_003 + epoch)
    order = torch.randperm(len(data), generator=generator)
    for start in range(0, len(order) - recipe.batch_size + 1 if len(order) >= recipe.batch_size else 1,
                       recipe.batch_size):
        index = order[start : start + recipe.batch_size]
        pixels = data.pixels[index].float().div(255.0)
        if recipe.augment:
            pixels = random_shift_flip(pixels, generator)
        labels = None if data.labels is None else data.labels[index].to(device)
        yield pixels.to(device), labels, generator


def steps_per_epoch(count: int, batch_size: int) -> int:
    return max(1, count // batch_size)


def finetune(finetuner: Finetuner, train: TrainingImages, validation: TrainingImages, *, checkpoints: Path,
             resume: bool, stop_after_epoch: int | None = None, progress: bool = True,
             log_line: Callable[[str], None] = log.warning) -> FinetuneResult:
    """Run the remaining epochs of ``finetuner.recipe``; checkpoint after each; leave the BEST epoch's image tower in
    ``finetuner.tower``. ``resume`` continues after the last checkpoint in ``checkpoints`` (same recipe required).
    ``stop_after_epoch`` ends this run after that epoch (the learning-rate schedule still spans ``recipe.epochs``;
    a later ``resume`` finishes it), for jobs cut into time slots."""
    from tqdm.auto import tqdm

    recipe = finetuner.recipe
    history: list[EpochRecord] = []
    start_epoch = 1
    seconds = 0.0
    if resume:
        last = latest_checkpoint(checkpoints)
        if last is not None:
            state = load_torch_file(last, what="fine-tuning checkpoint")
            if state["recipe"] != asdict(recipe):
                raise ConfigError(f"--resume: {last} was written by a different recipe {state['recipe']}; "
                                  "rerun with the same options or a new --output")
            finetuner.load_state(state)
            history = [EpochRecord(**r) for r in state["history"]]
            start_epoch = int(state["epoch"]) + 1
            seconds = float(state["seconds"])
            log_line(f"resuming after epoch {state['epoch']} from {last}")
        else:
            log_line(f"--resume: no checkpoint in {checkpoints}; starting from epoch 1")
    elif latest_checkpoint(checkpoints) is not None:
        raise ConfigError(f"{checkpoints} already holds checkpoints; pass --resume to continue or choose a new "
                          "--output")
    checkpoints.mkdir(parents=True, exist_ok=True)
    per_epoch = steps_per_epoch(len(train), recipe.batch_size)
    total = per_epoch * recipe.epochs
    last_epoch = recipe.epochs if stop_after_epoch is None else min(recipe.epochs, stop_after_epoch)
    for epoch in range(start_epoch, last_epoch + 1):
        started = time.perf_counter()
        finetuner.tower.train()
        losses: list[float] = []
        bar = tqdm(total=per_epoch * recipe.batch_size, unit="img", disable=not progress, mininterval=2.0,
                   desc=f"{recipe.method} epoch {epoch}/{recipe.epochs}")
        for pixels, labels, generator in _batches(train, recipe, epoch, finetuner.device):
            losses.append(finetuner.train_step(pixels, labels, generator, total))
            bar.update(len(pixels))
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}", refresh=False)
        bar.close()
        finetuner.tower.eval()
        clean, robust, distance = finetuner.validate(validation, seed=recipe.seed)
        elapsed = time.perf_counter() - started
        seconds += elapsed
        record = EpochRecord(epoch=epoch, train_loss=sum(losses) / len(losses), clean_accuracy=clean,
                             robust_accuracy=robust, adversarial_distance=distance, seconds=round(elapsed, 1))
        history.append(record)
        log_line(f"epoch {epoch}: train loss {record.train_loss:.4f}, validation ({len(validation)} images) "
                 f"clean {percent(clean)}, robust {percent(robust)} (PGD-{recipe.steps} at eps {recipe.eps:.5f}), "
                 f"adversarial distance {distance:.4f}, {elapsed:.0f} s")
        torch.save({**finetuner.state(), "epoch": epoch, "recipe": asdict(recipe), "seconds": seconds,
                    "history": [asdict(r) for r in history]}, checkpoints / f"epoch-{epoch}.pt")
    if not history:
        raise ConfigError(f"--stop-after-epoch {stop_after_epoch}: no epoch was run or found in {checkpoints}")
    best = max(history, key=lambda r: (r.score(), r.epoch))
    if best.epoch != history[-1].epoch:
        state = load_torch_file(checkpoints / f"epoch-{best.epoch}.pt", what="fine-tuning checkpoint")
        finetuner.tower.load_state_dict(state["tower"])
    rate = per_epoch * recipe.batch_size * len(history) / seconds if seconds else 0.0  # validation time included
    return FinetuneResult(history=history, best=best, seconds=seconds, images_per_second=rate,
                          train_images=len(train), validation_images=len(validation))


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def latest_checkpoint(directory: Path) -> Path | None:
    found = sorted(directory.glob("epoch-*.pt"), key=lambda p: int(p.stem.split("-")[1])) if directory.is_dir() else []
    return found[-1] if found else None


def hardware() -> str:
    if torch.cuda.is_available():
        return f"CUDA {torch.cuda.get_device_name(0)}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu}, {torch.get_num_threads()} torch thread(s)"
