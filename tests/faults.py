"""Fault injection for the reliability checks, kept out of the training loop: a worker of a Ray Train run exits
at a given step, as if it crashed, in a run that did not start from a checkpoint.

    python -m tests.faults 70 train --num-workers 2 ...    # `sam train ...` with the last worker exiting at step 70
"""

from __future__ import annotations

import logging
import os
import sys

import ray.train

import sam.train

log = logging.getLogger("sam")


def exit_at_step(at_step: int, rank: int = -1):
    """`sam.train.train_func`, with the worker of `rank` (default: the last) exiting at its `at_step`-th
    `train_step`; install it with `monkeypatch.setattr(sam.train, "train_func", exit_at_step(N))`."""

    def faulty_train_func(loop_config: dict) -> None:
        context = ray.train.get_context()
        if ray.train.get_checkpoint() is None and context.get_world_rank() == (rank if rank >= 0 else context.get_world_size() - 1):
            step, steps = sam.train.train_step, 0

            def train_step(*args, **kwargs):
                nonlocal steps
                steps += 1
                if steps == at_step:
                    # Like a real crash after the last report has landed: without this wait the controller can
                    # see the death before it registers that checkpoint, and restart from scratch.
                    ray.train.get_all_reported_checkpoints()
                    log.warning("fault injection: worker %d exits at step %d", context.get_world_rank(), steps)
                    os._exit(1)
                return step(*args, **kwargs)

            sam.train.train_step = train_step  # this worker process's module: train_func looks it up per step
        # The worker's own module, where train_func is the real one: a copy pickled with this wrapper would look
        # up train_step in a copy of the module's globals, which the patch above does not reach.
        sam.train.train_func(loop_config)

    return faulty_train_func


if __name__ == "__main__":
    sam.train.train_func = exit_at_step(int(sys.argv[1]))
    from sam.cli import main

    sys.exit(main(sys.argv[2:]))
