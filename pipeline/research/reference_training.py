"""The recipe behind the bundled reference model: a small CLIP trained contrastively on Fashion-MNIST.

A standard CLIP (:class:`~cola_moderation.operators.backbones.checkpoint.TrainableClip`: ViT image tower at 28 px /
patch 4, a small text tower with OpenAI's CLIP BPE tokenizer) learns to pair Fashion-MNIST training images with
varied captions ("a photo of a sneaker.", "a catalogue image of a running shoe.", short descriptions...). The loss is
a class-aware contrastive loss: every caption of an image's class in the batch is a positive, in both directions
(image -> texts, text -> images). Captions get random vocabulary tokens inserted now and then, so the text tower
learns to ignore words it has not seen; together with many templates this lets it generalise to the held-out
evaluation templates of ``configs/reference.yaml`` (which
:func:`check_held_out` keeps disjoint from :data:`TRAIN_TEMPLATES`).

Evaluation goes through the product path: the saved checkpoint is loaded by
:func:`cola_moderation.operators.backbones.registry.load_backbone` and scored by
:class:`cola_moderation.operators.defences.zeroshot.ZeroShotClassifier`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cola_moderation.operators.backbones.base import Backbone, resolve_device
from cola_moderation.operators.backbones.checkpoint import ClipShape, TrainableClip
from cola_moderation.operators.backbones.clip_vocab import clip_tokenizer
from cola_moderation.operators.config import TaxonomyConfig
from cola_moderation.operators.defences.text_bank import TextBank
from cola_moderation.operators.defences.zeroshot import ZeroShotClassifier
from cola_moderation.operators.errors import ConfigError
from cola_moderation.pipeline.research.fashion_mnist import CLASS_NAMES, FashionMnist
from cola_moderation.pipeline.research.training import cosine_lr_factor, random_shift_flip

log = logging.getLogger(__name__)

REFERENCE_SHAPE = ClipShape(image_size=28, patch_size=7, vision_width=128, vision_layers=4, vision_heads=4,
                            text_width=128, text_layers=3, text_heads=4, projection_dim=128, context_length=32)

TRAIN_PHRASES: dict[str, tuple[str, ...]] = {
    "t_shirt": ("t-shirt", "tee", "top", "t-shirt or top", "short-sleeved top", "tee shirt"),
    "trouser": ("trousers", "pair of trousers", "pants", "pair of jeans", "slacks", "trouser"),
    "pullover": ("pullover", "sweater", "jumper", "knitted sweater", "long-sleeved pullover", "sweatshirt"),
    "dress": ("dress", "gown", "frock", "summer dress", "one-piece dress", "long dress"),
    "coat": ("coat", "jacket", "overcoat", "winter coat", "zip-up jacket", "parka"),
    "sandal": ("sandal", "sandals", "open-toed shoe", "summer sandal", "strappy sandal", "flip-flop"),
    "shirt": ("shirt", "button-up shirt", "blouse", "collared shirt", "dress shirt", "button-down shirt"),
    "sneaker": ("sneaker", "sneakers", "trainer", "running shoe", "athletic shoe", "sports shoe"),
    "bag": ("bag", "handbag", "purse", "tote bag", "shoulder bag", "backpack"),
    "ankle_boot": ("ankle boot", "boot", "bootie", "short boot", "leather ankle boot", "chelsea boot"),
}
"""Phrases substituted into the training templates, per class (keys are :data:`CLASS_NAMES`)."""

TRAIN_DESCRIPTIONS: dict[str, tuple[str, ...]] = {
    "t_shirt": ("a casual top with short sleeves and a round neck.", "a simple short-sleeved cotton tee."),
    "trouser": ("long pants with two legs.", "a pair of long trousers seen from the front."),
    "pullover": ("a warm knitted top with long sleeves.", "a long-sleeved sweater without buttons."),
    "dress": ("a one-piece garment for women with a skirt.", "a dress with a fitted top and a flowing skirt."),
    "coat": ("a long-sleeved outer garment with buttons or a zip.", "a warm jacket worn over other clothes."),
    "sandal": ("an open shoe held on by straps.", "a light summer shoe with straps and an open toe."),
    "shirt": ("a long-sleeved shirt with a collar and buttons.", "a collared top that buttons down the front."),
    "sneaker": ("a low sports shoe with laces and a rubber sole.", "a casual shoe for running or walking."),
    "bag": ("a bag with handles for carrying things.", "a purse or handbag with a strap."),
    "ankle_boot": ("a boot that covers the foot and the ankle.", "a short boot with a heel reaching the ankle."),
}

TRAIN_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.", "a {}.", "{}", "a picture of a {}.", "a close-up photo of a {}.",
    "a grayscale photo of a {}.", "a black and white photo of a {}.", "a product photo of a {}.",
    "a small photo of a {}.", "a low resolution photo of a {}.", "a photo of the {}.", "the {}.",
    "an item of clothing: a {}.", "a fashion photo of a {}.", "a catalogue image of a {}.",
    "a {} on a black background.", "a thumbnail of a {}.", "this is a {}.", "a pixelated photo of a {}.",
    "a picture of the {}.", "a centered photo of a {}.", "a {} for sale.", "an online shop photo of a {}.",
    "a cropped photo of a {}.", "a tiny image of a {}.", "a photo of my {}.", "a {} in a store.",
    "a scan of a {}.", "a photo showing a {}.", "there is a {} in this picture.",
)
"""Templates used in training. The evaluation templates (``configs/reference.yaml``) must not be among them."""


@dataclass(frozen=True)
class TrainingRecipe:
    """Every knob of a reference-model training run. The defaults reproduce the bundled model."""

    shape: ClipShape = REFERENCE_SHAPE
    epochs: int = 6
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 200
    captions_per_class: int = 8
    """Captions drawn per class for each batch; the batch's text side has ``10 * captions_per_class`` rows."""
    insert_prob: float = 0.3
    """Probability that a caption gets 1-2 random vocabulary tokens inserted (robustness to unseen words)."""
    seed: int = 0
    limit: int | None = None
    """Train on the first ``limit`` images only (smoke tests)."""
    device: str = "auto"
    threads: int | None = None
    """CPU threads for torch (``None``: torch's default). On a busy 2-core machine 1 thread is ~2x faster than 2."""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "captions_per_class"):
            if getattr(self, name) < 1:
                raise ConfigError(f"training recipe: {name} must be >= 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 2:
            raise ConfigError(f"training recipe: limit must be >= 2, got {self.limit}")
        if not 0.0 <= self.insert_prob <= 1.0:
            raise ConfigError(f"training recipe: insert_prob must be in [0, 1], got {self.insert_prob}")


@dataclass
class TrainingResult:
    """The trained model (fp32, train mode off) and what happened on the way."""

    model: TrainableClip
    losses: list[float] = field(default_factory=list)
    """Loss of every optimisation step, in order."""
    seconds: float = 0.0
    steps: int = 0


def check_held_out(taxonomy: TaxonomyConfig) -> None:
    """Refuse evaluation templates that were used in training (the accuracy would not be zero-shot)."""
    shared = sorted(set(taxonomy.templates) & set(TRAIN_TEMPLATES))
    if shared:
        raise ConfigError(f"taxonomy.templates: {shared} are training templates; held-out templates are required")


def caption_pool(*, templates: tuple[str, ...] = TRAIN_TEMPLATES) -> tuple[list[str], torch.Tensor]:
    """All training captions and their class index (``[T]`` int64): templates x phrases + descriptions."""
    texts: list[str] = []
    labels: list[int] = []
    for index, name in enumerate(CLASS_NAMES):
        captions = [template.format(phrase) for phrase in TRAIN_PHRASES[name] for template in templates]
        captions += list(TRAIN_DESCRIPTIONS[name])
        texts += captions
        labels += [index] * len(captions)
    return texts, torch.tensor(labels, dtype=torch.int64)


class CaptionSampler:
    """Draws ``captions_per_class`` tokenised captions per class and batches them as ``input_ids`` /
    ``attention_mask`` ``[K * m, L]`` (padded with the EOS id, as CLIP's tokenizer does)."""

    def __init__(self, texts: list[str], labels: torch.Tensor, *, max_length: int, insert_prob: float) -> None:
        tokenizer = clip_tokenizer(max_length=max_length)
        self.tokens: list[list[int]] = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        self.by_class = [torch.nonzero(labels == k).flatten() for k in range(len(CLASS_NAMES))]
        self.max_length = max_length
        self.insert_prob = insert_prob
        self.pad_id = tokenizer.pad_token_id
        self.vocab_size = 49406  # ordinary BPE tokens; the two special tokens come after them

    def sample(self, per_class: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> ``input_ids [K*m, L]``, ``attention_mask [K*m, L]``, ``labels [K*m]``."""
        rows: list[list[int]] = []
        labels: list[int] = []
        for k, pool in enumerate(self.by_class):
            picks = pool[torch.randint(len(pool), (per_class,), generator=generator)]
            for pick in picks.tolist():
                ids = list(self.tokens[pick])
                if torch.rand((), generator=generator).item() < self.insert_prob:
                    for _ in range(int(torch.randint(1, 3, (), generator=generator))):
                        if len(ids) >= self.max_length:
                            break
                        at = int(torch.randint(1, len(ids), (), generator=generator))
                        ids.insert(at, int(torch.randint(self.vocab_size, (), generator=generator)))
                rows.append(ids)
                labels.append(k)
        width = max(len(ids) for ids in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.int64)
        mask = torch.zeros((len(rows), width), dtype=torch.int64)
        for i, ids in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = 1
        return input_ids, mask, torch.tensor(labels, dtype=torch.int64)


def augment(images: torch.Tensor, generator: torch.Generator, *, pad: int = 2) -> torch.Tensor:
    """``[B, 28, 28]`` uint8 -> ``[B, 3, 28, 28]`` float pixels in [0, 1], randomly shifted by up to ``pad``
    pixels (zero fill, like the black background) and mirrored left-right with probability 1/2."""
    shifted = random_shift_flip(images.float().div(255.0).unsqueeze(1), generator, pad=pad)
    return shifted.expand(-1, 3, -1, -1)


def class_aware_loss(image_features: torch.Tensor, text_features: torch.Tensor, image_labels: torch.Tensor,
                     text_labels: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric contrastive loss where every same-class pair is a positive.

    ``image_features [B, d]`` and ``text_features [T, d]`` are unit-norm; labels are ``[B]`` and ``[T]``. Each row's
    target is uniform over its positives; texts with no image of their class in the batch are skipped.
    """
    logits = logit_scale * image_features @ text_features.T  # [B, T]
    positives = (image_labels.view(-1, 1) == text_labels.view(1, -1)).float()
    image_targets = positives / positives.sum(dim=1, keepdim=True).clamp_min(1.0)
    image_loss = -(image_targets * logits.log_softmax(dim=1)).sum(dim=1).mean()
    has_image = positives.sum(dim=0) > 0
    text_targets = positives.T / positives.sum(dim=0).clamp_min(1.0).view(-1, 1)
    text_loss = -(text_targets * logits.T.log_softmax(dim=1)).sum(dim=1)[has_image].mean()
    return (image_loss + text_loss) / 2


def _optimizers(model: TrainableClip, recipe: TrainingRecipe) -> list[torch.optim.Optimizer]:
    """AdamW for the dense parameters; SparseAdam for the 49,408-row token embedding, whose gradient touches only
    the few hundred tokens of the captions (a dense AdamW step over it cost a quarter of each step on CPU)."""
    token_embedding = model.token_embedding
    token_embedding.sparse = True
    dense = [(n, p) for n, p in model.named_parameters() if p is not token_embedding.weight]
    decay = [p for n, p in dense if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in dense if not (p.ndim >= 2 and "embedding" not in n)]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.98), eps=1e-6),
            torch.optim.SparseAdam([token_embedding.weight], lr=recipe.lr, betas=(0.9, 0.98), eps=1e-6)]


def train_reference(recipe: TrainingRecipe, data: FashionMnist, *, progress: bool = True,
                    on_epoch_end: Callable[[int, Any], None] | None = None) -> TrainingResult:
    """Train a CLIP of ``recipe.shape`` on ``data`` (the Fashion-MNIST train split). Deterministic for a given
    seed on a given device and thread count; uses CUDA when ``recipe.device`` is ``auto`` and a GPU is present.

    ``on_epoch_end(epoch, model)`` runs after each epoch (1-based) and must not modify the model."""
    from tqdm.auto import tqdm

    device = resolve_device(recipe.device)
    previous_threads = torch.get_num_threads()
    if recipe.threads is not None:
        torch.set_num_threads(recipe.threads)
    generator = torch.Generator().manual_seed(recipe.seed)
    model = TrainableClip(recipe.shape, seed=recipe.seed).to(device).train()
    texts, text_labels = caption_pool()
    sampler = CaptionSampler(texts, text_labels, max_length=recipe.shape.context_length,
                             insert_prob=recipe.insert_prob)
    images, labels = data.images, data.labels
    if recipe.limit is not None:
        images, labels = images[: recipe.limit], labels[: recipe.limit]
    steps_per_epoch = max(1, len(labels) // recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    optimizers = _optimizers(model, recipe)
    dense_params = [p for group in optimizers[0].param_groups for p in group["params"]]
    result = TrainingResult(model=model)
    started = time.perf_counter()
    bar = tqdm(total=total, desc="train-reference", unit="step", disable=not progress)
    for epoch in range(recipe.epochs):
        order = torch.randperm(len(labels), generator=generator)
        for step_in_epoch in range(steps_per_epoch):
            step = epoch * steps_per_epoch + step_in_epoch
            factor = cosine_lr_factor(step, warmup=min(recipe.warmup_steps, total // 5 or 1), total=total)
            for optimizer in optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = recipe.lr * factor
            batch = order[step_in_epoch * recipe.batch_size : (step_in_epoch + 1) * recipe.batch_size]
            pixels = augment(images[batch], generator).to(device)
            input_ids, attention_mask, caption_labels = sampler.sample(recipe.captions_per_class, generator)
            image_features = model.image_features(pixels)
            text_features = model.text_features(input_ids.to(device), attention_mask.to(device))
            loss = class_aware_loss(image_features, text_features, labels[batch].to(device),
                                    caption_labels.to(device), model.log_logit_scale.exp())
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(dense_params, 1.0)
            for optimizer in optimizers:
                optimizer.step()
            with torch.no_grad():
                model.log_logit_scale.clamp_(0.0, math.log(100.0))
            result.losses.append(float(loss.item()))
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{result.losses[-1]:.3f}")
        log.info("epoch %d/%d: mean loss %.4f", epoch + 1, recipe.epochs,
                 sum(result.losses[-steps_per_epoch:]) / steps_per_epoch)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, model)
    bar.close()
    result.seconds = time.perf_counter() - started
    result.steps = total
    model.token_embedding.sparse = False
    model.eval()
    torch.set_num_threads(previous_threads)
    return result


def save_reference(model: TrainableClip, directory: Path) -> Path:
    """Write ``model`` (a copy, cast to fp16) with tokenizer and processor files, loadable by ``load_backbone``."""
    return model.save(directory, dtype=torch.float16)


@dataclass(frozen=True)
class ZeroShotReport:
    """Zero-shot accuracy over a labelled set."""

    accuracy: float
    per_class: dict[str, float]
    count: int


def class_order(taxonomy: TaxonomyConfig) -> torch.Tensor:
    """``[10]``: the taxonomy index of each Fashion-MNIST class, failing when a class is missing."""
    names = taxonomy.label_names
    missing = [name for name in CLASS_NAMES if name not in names]
    if missing:
        raise ConfigError(f"taxonomy.labels: Fashion-MNIST classes {missing} are missing (need {list(CLASS_NAMES)})")
    return torch.tensor([names.index(name) for name in CLASS_NAMES])


def evaluate_zero_shot(backbone: Backbone, taxonomy: TaxonomyConfig, data: FashionMnist, *,
                       batch_size: int = 500) -> ZeroShotReport:
    """Classify every image of ``data`` with ``backbone`` + :class:`ZeroShotClassifier` over ``taxonomy`` (text
    embeddings averaged over its templates and synonyms) and compare with the true labels."""
    order = class_order(taxonomy)
    classifier = ZeroShotClassifier(TextBank.build(backbone, taxonomy), logit_scale=backbone.logit_scale,
                                    logit_bias=backbone.logit_bias)
    predicted = []
    for start in range(0, len(data), batch_size):
        pixels = data.pixels(slice(start, start + batch_size))
        predicted.append(classifier.scores(backbone.encode_images(pixels)).predicted.cpu())
    truth = order[data.labels]
    correct = torch.cat(predicted) == truth
    per_class = {name: float(correct[data.labels == k].float().mean()) for k, name in enumerate(CLASS_NAMES)
                 if bool((data.labels == k).any())}
    return ZeroShotReport(accuracy=float(correct.float().mean()), per_class=per_class, count=len(data))


def in_memory_backbone(model: TrainableClip, *, device: str = "cpu") -> Backbone:
    """Wrap a copy of a training model as a :class:`Backbone` (for evaluation during or right after training)."""
    return model.backbone(device=device)
