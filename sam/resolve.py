"""The one function that turns what the user gave (command-line knobs, a Tune trial's sample, a teacher, a
pretrained encoder) into the `Config` that trains and is saved in the model directory."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

from sam import SamError
from sam.config import ARCHS, CONFIG_FILE, DISTILLING, FINE_TUNING, Config
from sam.locations import local_model_dir


def resolve_config(given: Mapping[str, Any] | Config | None = None, sampled: Optional[Mapping[str, Any]] = None, *,
                   fixed: Iterable[str] = (), search: bool = False, gpus_per_trial: Optional[float] = None) -> Config:
    """The config a run trains with, in this order (a later step wins):

    1. the defaults, then the recipe that `given` calls for: FINE_TUNING with `init`, DISTILLING with a `teacher`
       and `student` "layers";
    2. `given`: knobs by bare name (command-line text or typed values), or a `Config` already resolved (a search's
       base), which then stands for steps 1 and 2;
    3. `sampled`, a Tune trial's knobs; d_ff follows a sampled d_model (4x, as in BERT) unless d_ff is `fixed`;
    4. a layered student's teacher: its tokenizer, token embeddings, layers, width, heads and d_ff, as ALBERT;
    5. a pretrained encoder (`init`): its own family and shape, so sam_config.json says what the directory holds
       (max_length stays the run's);
    6. `gpus_per_trial`: a search's GPUs per trial, split over the trial's workers;
    7. `search`: each worker computes on the CPUs it reserved (trials share nodes), and local paths are absolute
       (trials run in directories of their own).

    Steps 3 to 7 give the same config when applied again, so a search resolves its base once and each trial that
    base with its sample."""
    if isinstance(given, Config):
        config = given
    else:
        given = dict(given or {})
        config = Config().with_flat(**{**_recipe(given), **given})
    if sampled:
        knobs = dict(sampled)
        if "d_model" in knobs and "d_ff" not in fixed:
            knobs.setdefault("d_ff", 4 * knobs["d_model"])
        config = config.with_flat(**knobs)
    config = _with_teacher_layers(config)
    config = _with_pretrained_shape(config)
    if gpus_per_trial is not None:
        config = config.with_flat(use_gpu=gpus_per_trial > 0, gpus_per_worker=gpus_per_trial / config.scale.num_workers or 1.0)
    if search:
        if not config.scale.torch_threads:
            config = config.with_flat(torch_threads=max(1, config.scale.cpus_per_worker))
        config = config.with_absolute_paths()
    return config


def _recipe(given: Mapping[str, Any]) -> dict:
    layered_student = given.get("teacher") and given.get("student", "layers") == "layers"
    return FINE_TUNING if given.get("init") else DISTILLING if layered_student else {}


def teacher_config(config: Config, teacher: Optional[str] = None) -> Config:
    """The config a teacher (default: the run's first) was trained with, saved in its model directory (a URI is
    fetched into this node's cache)."""
    teacher = teacher or config.distill.teacher
    directory = local_model_dir(teacher)
    if not (directory / CONFIG_FILE).is_file():
        raise SamError(f"teacher {teacher}: not a SAM model directory (no {CONFIG_FILE}), so its split "
                       "cannot be checked against this run's validation rows")
    return Config.load(directory)


def _with_teacher_layers(config: Config) -> Config:
    """A layered student (`student` "layers", the default) starts as its teacher with layers left out, so it takes
    the teacher's tokenizer and token embeddings and the width, heads and d_ff its layers need: as with `init`, the
    teacher's shape wins over the configured one. A scratch student, or a run without a teacher, is left as it is."""
    if not config.distill.teacher or config.distill.student != "layers":
        return config
    from transformers import AutoConfig

    teacher, shape = config.distill.teacher, teacher_config(config).model
    kind = AutoConfig.from_pretrained(local_model_dir(teacher)).model_type
    if kind != "bert":
        raise SamError(f"teacher {teacher}: a {kind} encoder, whose layers cannot start a student's (BERT's only): "
                       "give --student scratch")
    return config.with_flat(arch="albert", tokenizer=teacher, init_embeddings=teacher, init_layers=True, d_model=shape.d_model,
                            num_heads=shape.num_heads, d_ff=shape.d_ff)


def _with_pretrained_shape(config: Config) -> Config:
    """With `init`, the pretrained encoder's own shape (MiniLM: 6 layers of 384, not the default 4 of 256), and its
    family where it is one SAM builds (another one's config.json says what it is)."""
    if not config.start.init:
        return config
    from transformers import AutoConfig

    shape = AutoConfig.from_pretrained(local_model_dir(config.start.init))
    arch = shape.model_type if shape.model_type in ARCHS else config.model.arch
    return config.with_flat(arch=arch, embedding_size=getattr(shape, "embedding_size", 0) if arch == "albert" else 0,
                            num_layers=shape.num_hidden_layers, num_heads=shape.num_attention_heads, d_model=shape.hidden_size,
                            d_ff=getattr(shape, "intermediate_size", config.model.d_ff), vocab_size=shape.vocab_size)
