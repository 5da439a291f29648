"""What a training step uses, in plain PyTorch with no Ray: optimiser, schedule, loss, weight average, and the
tallies of an epoch and of an evaluation. `sam.train`'s `train_step` and `eval_step` use them."""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional

import torch
from transformers import get_linear_schedule_with_warmup

from sam.config import DistillConfig, TrainConfig
from sam.evaluate import classification_metrics


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with no decay on biases and norm weights (every 1-d parameter)."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim < 2 else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr)


def warmup_steps(config: TrainConfig, total_steps: int) -> int:
    """`warmup_steps`, but never more than `warmup_share` of the run: 8,000 tweets for 2 epochs (226 steps) warm
    up for 56 and decay for the rest (docs/experiments.md), where 300 would never have left the warm-up."""
    return min(config.warmup_steps, int(config.warmup_share * total_steps))


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    """Linear warm-up to `lr` over `warmup_steps`, then linear decay to zero at `total_steps`."""
    return get_linear_schedule_with_warmup(optimizer, num_warmup_steps=warmup_steps(config, total_steps),
                                           num_training_steps=total_steps)


def make_averaged(model: torch.nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of `model`'s weights, or None when `decay` is 0: small noisy steps leave
    the last weights beside the minimum, their recent average nearer to it.

    Bias-corrected like Adam's moments, so that a short run is not an average with the random initial weights."""
    if not decay:
        return None

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        # The step count stays a tensor: reading it back to Python would make every GPU step wait for the device.
        step_weight = (1 - decay) / (1 - decay ** (num_averaged + 1))
        for average, weight in zip(averaged, current):
            average.lerp_(weight, step_weight)

    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=update)


def make_loss(config: TrainConfig, weights: list[float] | None, device: torch.device) -> torch.nn.CrossEntropyLoss:
    weight = torch.tensor(weights, dtype=torch.float32, device=device) if config.class_weights and weights else None
    return torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      hard_loss: torch.nn.Module, alpha: float, temperature: float) -> torch.Tensor:
    """alpha * T^2 * KL(teacher || student, both softened by T) + (1 - alpha) * the loss on the gold labels
    (Hinton et al. 2015; T^2 keeps the soft term's gradients on the hard term's scale)."""
    soft = torch.nn.functional.kl_div(torch.log_softmax(logits / temperature, -1), torch.log_softmax(teacher_logits / temperature, -1),
                                      reduction="batchmean", log_target=True) * temperature**2
    return alpha * soft + (1 - alpha) * hard_loss(logits, labels)


def kept_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """The teacher's layers (0-based) a student's stand for, evenly spaced with the first and last kept: the layers
    a layered student starts from and, with `hidden_weight`, keeps learning from."""
    return torch.linspace(0, teacher_layers - 1, student_layers).round().long().tolist()


def hidden_state_loss(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...],
                      attention_mask: torch.Tensor) -> torch.Tensor:
    """Each student layer's output against the output of the teacher layer it stands for (`kept_layers`), by mean
    squared error over real tokens, averaged over the layers (TinyBERT's hidden-state loss). Both are `transformers`'
    `hidden_states`: the embedding output, then each layer's."""
    mask = attention_mask.unsqueeze(-1).to(student[-1].dtype)
    values = mask.sum() * student[-1].shape[-1]
    layers = kept_layers(len(teacher) - 1, len(student) - 1)
    return torch.stack([((mine - teacher[theirs + 1]) ** 2 * mask).sum() / values
                        for mine, theirs in zip(student[1:], layers)]).mean()


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on GPU when asked; CPU stays fp32 (bf16 matmuls are slower than fp32 on most CPUs)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and bf16 else nullcontext()


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Host tensors reach an accelerator through pinned memory, so the copy overlaps compute; tensors already on
    one (Ray Data's `iter_torch_batches` puts them on the worker's device) are left where they are."""
    if device.type == "cpu":
        return batch
    return {name: tensor.pin_memory().to(device, non_blocking=True) if tensor.device.type == "cpu" else tensor
            for name, tensor in batch.items()}


@dataclass
class Predictions:
    """Labels, predictions and summed unweighted cross-entropy over an evaluation pass."""

    labels: list[int] = field(default_factory=list)
    predicted: list[int] = field(default_factory=list)
    loss_sum: float = 0.0

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss_sum += torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum").item()
        self.labels += labels.tolist()
        self.predicted += logits.argmax(-1).tolist()

    @classmethod
    def merged(cls, parts: list["Predictions"]) -> "Predictions":
        merged = cls()
        for part in parts:
            merged.labels += part.labels
            merged.predicted += part.predicted
            merged.loss_sum += part.loss_sum
        return merged

    def metrics(self) -> dict[str, float]:
        scores = classification_metrics(self.labels, self.predicted)
        return {"loss": self.loss_sum / max(scores["n"], 1), "accuracy": scores["accuracy"],
                "macro_f1": scores["macro_f1"], "n": scores["n"]}


@dataclass
class EpochStats:
    samples: int = 0
    steps: int = 0
    loss_sum: float | torch.Tensor = 0.0  # summed on the device: reading it back is a GPU sync, done when logged
    seconds: float = 0.0
    data_wait_s: float = 0.0  # the loop sat waiting for its next batch: input-bound when this is large

    def timed(self, batches: Iterable[dict]) -> Iterator[dict]:
        """`batches`, with the wait for each added to `data_wait_s` and the whole pass to `seconds`."""
        started, batches = time.perf_counter(), iter(batches)
        while True:
            waited = time.perf_counter()
            batch = next(batches, None)
            self.data_wait_s += time.perf_counter() - waited
            if batch is None:
                break
            yield batch
        self.seconds += time.perf_counter() - started

    def add(self, loss: torch.Tensor, samples: int) -> None:
        self.steps += 1
        self.samples += samples
        self.loss_sum += loss * samples

    @property
    def loss(self) -> float:
        return float(self.loss_sum) / max(self.samples, 1)

    @property
    def samples_per_s(self) -> float:
        return self.samples / max(self.seconds, 1e-9)


class Learner:
    """What training updates: the model (perhaps wrapped for DDP), its optimiser, schedule, loss and weight
    average. What is evaluated and saved is the plain module or its weight average."""

    def __init__(self, model: torch.nn.Module, config: TrainConfig, total_steps: int, class_weights: list[float] | None,
                 device: torch.device, bf16: bool = False, distill: Optional[DistillConfig] = None,
                 teacher: Optional[torch.nn.Module] = None):
        self.model, self.config, self.device, self.bf16, self.distill = model, config, device, bf16, distill
        # Frozen: its hidden states are targets, never trained.
        self.teacher = teacher.to(device).eval().requires_grad_(False) if teacher is not None else None
        self.module = model.module if hasattr(model, "module") else model
        self.optimizer = make_optimizer(model, config)
        self.scheduler = make_scheduler(self.optimizer, config, total_steps)
        self.hard_loss = make_loss(config, class_weights, device)
        self.averaged = make_averaged(self.module, config.ema_decay)

    @property
    def evaluated(self) -> torch.nn.Module:
        return self.averaged.module if self.averaged is not None else self.module

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def forward(self, batch: dict[str, torch.Tensor]):
        """The model's output for a training step; with a teacher in the loop, with every layer's hidden states."""
        with autocast(self.device, self.bf16):
            return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              output_hidden_states=self.teacher is not None)

    def loss(self, output, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The gold labels' loss, or distillation's when the batch carries a teacher's logits, plus, with a teacher
        in the loop, `hidden_weight` times the hidden-state loss against the teacher's states for the same ids."""
        logits = output.logits.float()
        if "teacher_logits" not in batch:
            return self.hard_loss(logits, batch["labels"])
        loss = distillation_loss(logits, batch["teacher_logits"], batch["labels"], self.hard_loss,
                                 self.distill.alpha, self.distill.temperature)
        if self.teacher is not None:
            with torch.no_grad(), autocast(self.device, self.bf16):
                taught = self.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                      output_hidden_states=True).hidden_states
            states = tuple(state.float() for state in output.hidden_states)
            loss = loss + self.distill.hidden_weight * hidden_state_loss(states, tuple(t.float() for t in taught),
                                                                        batch["attention_mask"])
        return loss

    def state_dict(self) -> dict:
        """What resuming needs beyond the evaluated weights: optimiser and schedule, and, with a weight average,
        the raw weights training continues from and the average's step count."""
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        if self.averaged is not None:
            state.update(weights=self.module.state_dict(), averaged_steps=self.averaged.n_averaged)
        return state

    def load_state_dict(self, state: dict) -> None:
        """After building from a checkpoint's evaluated weights: the average starts as a copy of them, then the
        raw weights are put back underneath it."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.averaged is not None:
            self.module.load_state_dict(state["weights"])
            self.averaged.n_averaged.copy_(state["averaged_steps"])
