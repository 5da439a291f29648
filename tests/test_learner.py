import pytest
import torch

from sam.batching import collate
from sam.config import ModelConfig, TrainConfig
from sam.learner import Learner, Predictions, make_averaged, make_optimizer, make_scheduler, to_device, warmup_steps
from sam.models import build_model
from sam.tokenizer import train_wordpiece
from sam.train import train_step
from tests.helpers import tiny_learner, tweet_rows


def test_schedule_peaks_at_the_configured_lr_then_decays_to_zero():
    # The replaced system's warm-up never rose above 1e-7: the peak must be the configured rate.
    config = TrainConfig(lr=3e-4, warmup_steps=50)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    scheduler = make_scheduler(optimizer, config, total_steps=200)
    rates = []
    for _ in range(200):
        optimizer.step()
        scheduler.step()
        rates.append(scheduler.get_last_lr()[0])
    assert abs(max(rates) - 3e-4) < 1e-12
    assert rates.index(max(rates)) == 49
    assert rates[-1] == 0.0


def test_warm_up_is_at_most_its_share_of_the_run():
    config = TrainConfig()  # 300 steps, at most a quarter of the run
    assert warmup_steps(config, total_steps=226) == 56  # 8,000 tweets, 2 epochs: 170 steps of decay, not 0
    assert warmup_steps(config, total_steps=1161) == 290  # the full split, 3 epochs
    assert warmup_steps(config, total_steps=5000) == 300
    assert warmup_steps(TrainConfig(warmup_steps=10_000, warmup_share=0.06), total_steps=1000) == 60  # a share alone


def test_no_weight_decay_on_norms_and_biases():
    model = build_model(ModelConfig(num_layers=1, num_heads=2, d_model=16, d_ff=32), train_wordpiece(["a b c"] * 5, 50))
    decayed, undecayed = make_optimizer(model, TrainConfig(weight_decay=0.01)).param_groups
    assert decayed["weight_decay"] == 0.01 and all(p.ndim == 2 for p in decayed["params"])
    assert undecayed["weight_decay"] == 0.0 and all(p.ndim == 1 for p in undecayed["params"])


def test_weight_average_is_a_bias_corrected_exponential_average():
    weight = torch.nn.Linear(1, 1, bias=False)
    assert make_averaged(weight, 0.0) is None
    averaged, moment = make_averaged(weight, 0.9), 0.0
    with torch.no_grad():
        for step, value in enumerate((1.0, 2.0, 3.0, 5.0), start=1):
            weight.weight.fill_(value)
            averaged.update_parameters(weight)
            moment = 0.9 * moment + 0.1 * value
            assert averaged.module.weight.item() == pytest.approx(moment / (1 - 0.9**step))  # no pull toward 0 or step 1


def test_training_state_round_trip_resumes_the_same_run():
    rows = tweet_rows()
    learner, columns, pad_id = tiny_learner(rows, ema_decay=0.9)
    batch = collate(columns, pad_id)
    for _ in range(3):
        train_step(learner, batch)
    state = {k: v for k, v in learner.state_dict().items()}
    resumed, _, _ = tiny_learner(rows, ema_decay=0.9)
    resumed.module.load_state_dict(learner.evaluated.state_dict())  # a checkpoint's model is the averaged weights
    resumed = Learner(resumed.module, learner.config, 30, None, torch.device("cpu"))
    resumed.load_state_dict(state)
    assert resumed.lr == learner.lr and int(resumed.averaged.n_averaged) == 3
    for raw, restored in zip(learner.module.state_dict().values(), resumed.module.state_dict().values()):
        assert torch.equal(raw, restored)
    for average, restored in zip(learner.evaluated.state_dict().values(), resumed.evaluated.state_dict().values()):
        assert torch.equal(average, restored)


class TensorOnAccelerator:
    """Stands in for a CUDA tensor on a CPU machine: already on the device, and refusing to be pinned as a real
    one does (`cannot pin 'torch.cuda.LongTensor' only dense CPU tensors can be pinned`)."""

    device = torch.device("cuda", 0)

    def pin_memory(self):
        raise RuntimeError("cannot pin 'torch.cuda.LongTensor' only dense CPU tensors can be pinned")

    def to(self, *args, **kwargs):
        return self


def test_batches_already_on_the_device_are_left_there():
    # Ray Data's iter_torch_batches hands a GPU worker's validation batches over on its GPU already.
    on_device = {"input_ids": TensorOnAccelerator(), "labels": TensorOnAccelerator()}
    assert to_device(on_device, torch.device("cuda", 0)) == on_device
    on_cpu = {"input_ids": torch.ones(2, 3, dtype=torch.long)}
    assert to_device(on_cpu, torch.device("cpu"))["input_ids"] is on_cpu["input_ids"]


def test_predictions_merge_and_metrics():
    a, b = Predictions(), Predictions()
    a.add(torch.tensor([[5.0, 0, 0], [0, 5.0, 0]]), torch.tensor([0, 1]))
    b.add(torch.tensor([[0, 0, 5.0]]), torch.tensor([0]))
    metrics = Predictions.merged([a, b]).metrics()
    assert metrics["n"] == 3 and abs(metrics["accuracy"] - 2 / 3) < 1e-9


def test_hidden_state_loss_is_zero_for_a_copy_of_the_teachers_layers_and_trains_the_student_alone():
    import copy

    from transformers import BertConfig, BertForSequenceClassification

    from sam.config import DistillConfig
    from sam.learner import hidden_state_loss

    torch.manual_seed(0)
    shape = dict(vocab_size=40, hidden_size=16, num_attention_heads=2, intermediate_size=32, num_labels=3)
    teacher = BertForSequenceClassification(BertConfig(num_hidden_layers=3, **shape)).eval()
    ids = torch.randint(5, 40, (4, 7))
    mask = torch.ones_like(ids)
    mask[:2, 5:] = 0  # two padded rows
    states = lambda model: model.eval()(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states  # noqa: E731
    copied = copy.deepcopy(teacher)
    assert hidden_state_loss(states(copied), states(teacher), mask).item() == 0.0
    # Padding never counts: states changed only where the mask is 0 leave the loss at 0.
    padded = tuple(state + 5 * (1 - mask).unsqueeze(-1) for state in states(copied))
    assert hidden_state_loss(padded, states(teacher), mask).item() == 0.0
    # A student of 2 layers stands for the teacher's first and last: a copy of those two, left as they were, is not
    # a copy of the teacher's computation, so the loss is positive; so is a copy with one weight moved.
    shallow = BertForSequenceClassification(BertConfig(num_hidden_layers=2, **shape))
    shallow.load_state_dict({k.replace("layer.2.", "layer.1."): v for k, v in teacher.state_dict().items() if ".layer.1." not in k})
    assert hidden_state_loss(states(shallow), states(teacher), mask).item() > 0
    with torch.no_grad():
        copied.bert.encoder.layer[1].output.dense.weight.add_(0.1)
    assert hidden_state_loss(states(copied), states(teacher), mask).item() > 0

    # Through a training step's loss: the student's layers get gradients, the teacher's none.
    distill = DistillConfig(teacher="teacher", hidden_weight=1.0, alpha=1.0)
    learner = Learner(copied.train(), TrainConfig(), 10, None, torch.device("cpu"), distill=distill, teacher=teacher)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 2, 1]), "teacher_logits": torch.zeros(4, 3)}
    learner.loss(learner.forward(batch), batch).backward()
    assert copied.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    assert all(parameter.grad is None and not parameter.requires_grad for parameter in teacher.parameters())
