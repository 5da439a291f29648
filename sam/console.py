"""What a person sees while a command runs: SAM's own lines, a progress bar per epoch on a terminal (plain lines
at a steady rate otherwise), and Ray's internal chatter kept in Ray's log files unless `--verbose`."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import timedelta

from sam import SamError

log = logging.getLogger("sam")

# Loggers whose INFO and WARNING lines are a library's internals, not the user's business by default.
LIBRARY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve", "mlflow", "alembic", "filelock", "urllib3")
# Ray 2.60 names no public logger for either of these, so their module paths are the only handle:
# Ray Data's progress when the output is not a terminal, a line every 10 s (RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL),
# for the datasets that ask for it (batch jobs); and Ray Train's report of every epoch (metrics, checkpoint path),
# at INFO on a logger named after its file. `ray.init(logging_config=...)` would also drop SAM's own INFO lines.
DATA_PROGRESS_LOGGER = "ray.data._internal.progress.logging_progress"
TRAIN_REPORT_LOGGER_FILE = ("train", "v2", "_internal", "execution", "context.py")
PLAIN_INTERVAL_ENV = "SAM_PROGRESS_INTERVAL_S"
# Set on the driver, which owns the terminal, and passed to every Ray process of the job, on every node.
CONSOLE_ENV, VERBOSE_ENV = "SAM_CONSOLE", "SAM_VERBOSE"
# Ray Train's print patch logs tqdm_ray's state lines, newline and all: a blank line under every bar update.
PRINT_PATCH_ENV = "RAY_TRAIN_ENABLE_PRINT_PATCH"
PASSED_ENV = ("MLFLOW_TRACKING_URI", CONSOLE_ENV, VERBOSE_ENV, PLAIN_INTERVAL_ENV)
DEFAULT_PLAIN_INTERVAL_S = 10.0


def on_terminal() -> bool:
    return sys.stderr.isatty()


@dataclass(frozen=True)
class ProgressSettings:
    """What the driver's console wants, for the workers that draw progress."""

    interactive: bool  # a bar; else a plain line every `interval_s`
    interval_s: float
    verbose: bool

    @classmethod
    def here(cls) -> "ProgressSettings":
        """As `configure` set them on the driver (and Ray passed them on), else from this process's own stderr."""
        console = os.environ.get(CONSOLE_ENV)
        return cls(interactive=console == "terminal" if console else on_terminal(),
                   interval_s=float(os.environ.get(PLAIN_INTERVAL_ENV, DEFAULT_PLAIN_INTERVAL_S)),
                   verbose=os.environ.get(VERBOSE_ENV) == "1")

    @property
    def train_log_level(self) -> str:
        """For Ray Train's `LoggingConfig`: its INFO lines (resources, process groups, each checkpoint) only when verbose."""
        return "INFO" if self.verbose else "WARNING"


def _quiet_libraries(with_ray: bool = True) -> None:
    """Library lines at ERROR. `with_ray` False leaves Ray unimported (0.9 s), for the commands that never start it;
    those that do call `quiet_ray` first."""
    if with_ray:
        import ray.data  # noqa: F401  Ray Data sets its loggers' levels as it is imported: first, so these stay
    for name in LIBRARY_LOGGERS:
        if with_ray or not name.startswith("ray"):
            logging.getLogger(name).setLevel(logging.ERROR)
    if with_ray:
        logging.getLogger(DATA_PROGRESS_LOGGER).setLevel(logging.INFO)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # save_pretrained's "Writing model shards" bar per checkpoint
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"  # read as transformers is imported; importing it here costs 0.6 s
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()


def quiet_ray(verbose: bool) -> None:
    """On the driver, before a command starts Ray: Ray's own lines go to its log files unless `verbose`."""
    if not verbose:
        _quiet_libraries()


def quiet_worker() -> None:
    """Ray's `worker_process_setup_hook`: in every Ray worker of the job, only errors from the libraries."""
    import ray

    _quiet_libraries()
    logging.getLogger(os.path.join(os.path.dirname(ray.__file__), *TRAIN_REPORT_LOGGER_FILE)).setLevel(logging.WARNING)


def configure(verbose: bool) -> None:
    """The driver's console: SAM's INFO lines always; library lines only with `verbose`; no colour codes in
    Ray's worker-line prefixes when the output is not a terminal (CI, `| tee`)."""
    logging.basicConfig(format="%(message)s", level=logging.INFO)
    os.environ[CONSOLE_ENV] = "terminal" if on_terminal() else "plain"
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    os.environ.setdefault(PRINT_PATCH_ENV, "0")  # read where a trainer is made, and passed to its workers
    if not on_terminal():  # read when Ray is imported, which comes later
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # its "[repeated Nx across cluster]" suffix is coloured
    if not verbose:
        _quiet_libraries(with_ray=False)


def ray_init_options(verbose: bool) -> dict:
    """`ray.init` options for a command: worker lines reach the driver (SAM's progress comes from its workers),
    and without `verbose` every worker runs `quiet_worker` first."""
    passed = {name: os.environ[name] for name in PASSED_ENV if name in os.environ} | {PRINT_PATCH_ENV: "0"}
    if verbose:
        return {"log_to_driver": True, "runtime_env": {"env_vars": passed}}
    return {"log_to_driver": True, "logging_level": logging.ERROR,
            "runtime_env": {"worker_process_setup_hook": "sam.console.quiet_worker",
                            "env_vars": {**passed, "RAY_DATA_LOG_LEVEL": "ERROR",
                                         "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning"}}}


DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str, option: str) -> timedelta:
    """`30s`, `90m`, `24h`, `7d`; anything else is one error naming the option."""
    match = DURATION.match(text.strip())
    if not match:
        raise SamError(f"{option} {text!r}: expected a number and a unit (s, m, h or d), e.g. 24h")
    return timedelta(**{UNITS[match[2]]: float(match[1])})


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class EpochProgress:
    """One epoch as rank 0 sees it: on a terminal, a bar (Ray's `tqdm_ray`, drawn by the driver) with steps done of
    total, loss, samples/s and time left; elsewhere the same figures as a plain line every `interval_s`."""

    DESCRIPTION_EVERY_S = 1.0  # the loss is read back from the device at most this often

    def __init__(self, epoch: int, epochs: int, total_steps: int, settings: ProgressSettings, shown: bool = True):
        """`shown` False (every rank but 0) makes `update` a no-op."""
        self.epoch, self.epochs, self.total, self.settings, self.shown = epoch, epochs, total_steps, settings, shown
        self.started = self.last_shown = time.perf_counter()
        self.bar = None
        if shown and settings.interactive:
            from ray.experimental import tqdm_ray

            self.bar = tqdm_ray.tqdm(total=total_steps, desc=f"epoch {epoch}/{epochs}", unit="step")

    def update(self, steps: int, samples: int, loss) -> None:
        """After each step; `loss` is a callable, called only when the figures are shown."""
        if not self.shown:
            return
        now = time.perf_counter()
        if self.bar is not None:
            self.bar.update(1)
        due = now - self.last_shown >= (self.DESCRIPTION_EVERY_S if self.bar is not None else self.settings.interval_s)
        if not due:
            return
        self.last_shown, rate = now, samples / max(now - self.started, 1e-9)
        if self.bar is not None:
            self.bar.set_description(f"epoch {self.epoch}/{self.epochs} loss {loss():.4f} {rate:,.0f} samples/s")
        else:
            left = (self.total - steps) * (now - self.started) / max(steps, 1)
            log.info("epoch %d/%d: step %d/%d (%d%%), loss %.4f, %.0f samples/s, %s left", self.epoch, self.epochs,
                     steps, self.total, 100 * steps // max(self.total, 1), loss(), rate, _duration(left))

    def __enter__(self) -> "EpochProgress":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
