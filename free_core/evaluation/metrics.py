"""Sample quality on the procedural data: a small shipped classifier gives class accuracy of generated
images and the Frechet distance (FD) between its penultimate features of generated and real images."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..training.data import NUM_CLASSES, make_batch
from ..training.progress import Progress


class ProceduralClassifier(nn.Module):
    """A small CNN for 32x32 procedural images; `features` is the 128-d embedding used for FD."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.SiLU(), nn.MaxPool2d(2),  # 16x16
            nn.Conv2d(32, 64, 3, padding=1), nn.GroupNorm(8, 64), nn.SiLU(), nn.MaxPool2d(2),  # 8x8
            nn.Conv2d(64, 128, 3, padding=1), nn.GroupNorm(8, 128), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.classifier = nn.Linear(128, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)  # (N, 128)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images))  # (N, classes)


def train_classifier(out: str | Path, steps: int = 600, batch_size: int = 128, seed: int = 0, lr: float = 2e-3) -> tuple[Path, float]:
    """Train on fresh procedural batches; returns (path, held-out accuracy)."""
    torch.manual_seed(seed)
    model = ProceduralClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    progress = Progress(steps, "train-classifier")
    for step in range(steps):
        images, labels = make_batch(batch_size, seed=seed * 1_000_000 + step)
        images = images + 0.1 * torch.randn_like(images)  # robustness to the small residual noise of samples
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress.update(step + 1, loss=loss.item())
    progress.close()
    model.eval()
    images, labels = make_batch(2000, seed=seed + 999_999_999)
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).float().mean().item()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"format": "free_core.classifier", "held_out_accuracy": f"{accuracy:.4f}", "steps": str(steps), "seed": str(seed)})
    return path, accuracy


def load_classifier(path: str | Path | None = None) -> ProceduralClassifier:
    from ..models.checkpoints import EMBEDDED_CLASSIFIER

    path = Path(path or EMBEDDED_CLASSIFIER)
    if not path.is_file():
        raise FileNotFoundError(f"no classifier weights at {path}")
    model = ProceduralClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.eval()


@torch.no_grad()
def class_accuracy(classifier: ProceduralClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of images the classifier assigns to their requested class."""
    predictions = torch.cat([classifier(chunk.float().cpu()).argmax(1) for chunk in images.split(256)])
    return (predictions == labels.cpu()).float().mean().item()


@torch.no_grad()
def classifier_features(classifier: ProceduralClassifier, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([classifier.features(chunk.float().cpu()) for chunk in images.split(256)]).double()


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), via symmetric eigendecompositions."""
    a, b = features_a.double(), features_b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov_a)
    sqrt_a = eigenvectors @ torch.diag(eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T
    middle = sqrt_a @ cov_b @ sqrt_a
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * trace_sqrt)


def reference_features(classifier: ProceduralClassifier, n: int, seed: int = 12345) -> torch.Tensor:
    """Classifier features of `n` real procedural images (a fixed held-out seed)."""
    images, _ = make_batch(n, seed=seed)
    return classifier_features(classifier, images)


def quality_report(classifier: ProceduralClassifier, images: torch.Tensor, labels: torch.Tensor,
                   reference: torch.Tensor) -> dict[str, float]:
    """Class accuracy and FD of generated images against real-image features."""
    started = time.perf_counter()
    report = {
        "class_accuracy": class_accuracy(classifier, images, labels),
        "fd": frechet_distance(classifier_features(classifier, images), reference),
        "n": int(images.shape[0]),
    }
    report["eval_time_s"] = time.perf_counter() - started
    return report
