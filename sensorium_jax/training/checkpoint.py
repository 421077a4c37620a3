"""Orbax checkpoints: the latest train state + data iterator + loop bookkeeping, and the best state so far.

``<workdir>/checkpoints/<step>/`` holds ``state`` (model, optimiser, lr scale, rng), ``data`` (the Grain iterator
position) and ``loop`` (early-stopping bookkeeping, JSON); a killed run restores all three and continues with
the very batches it would have seen. ``<workdir>/best/<step>/`` holds the state with the best validation
correlation: the reduce-on-plateau schedule restores it, and evaluation loads it.

Every process calls save and restore (orbax coordinates multi-host writes); the decisions to save are taken
from values that are identical on every host.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


def _abstract(tree: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _options(name: str, max_to_keep: int) -> ocp.CheckpointManagerOptions:
    # Orbax names its cross-process barriers after what they guard, not after the manager: "async_write_complete.
    # <step>" for a save's background thread, and unsuffixed keys for its save-in-progress bookkeeping. Both managers
    # save the same step when an epoch improves, and the best manager's background work overlaps the latest one's
    # save, so without a prefix of their own one host's "latest" thread could meet the other host's "best" thread at
    # a barrier, leaving a thread waiting for a partner nobody sends (a hang, then a failed shutdown barrier).
    return ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=True,
        multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name),
    )


class Checkpoints:
    def __init__(self, workdir: str | Path, max_to_keep: int = 2):
        workdir = Path(workdir).absolute()
        self.latest = ocp.CheckpointManager(
            workdir / "checkpoints", options=_options("latest", max_to_keep), item_names=("state", "data", "loop")
        )
        self.best = ocp.CheckpointManager(workdir / "best", options=_options("best", 1), item_names=("state", "loop"))

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def save_latest(self, step: int, state: Any, data_iterator: grain.DatasetIterator, loop: dict) -> None:
        self.latest.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iterator),
                loop=ocp.args.JsonSave(loop),
            ),
        )

    def restore_latest(self, target_state: Any, data_iterator: grain.DatasetIterator) -> tuple[Any, dict]:
        """Restore into ``target_state``'s shapes and shardings; the iterator is repositioned in place."""
        step = self.latest.latest_step()
        restored = self.latest.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_abstract(target_state)),
                data=grain.checkpoint.CheckpointRestore(data_iterator),
                loop=ocp.args.JsonRestore(),
            ),
        )
        return restored.state, dict(restored.loop)

    def save_best(self, step: int, state: Any, loop: dict) -> None:
        self.best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), loop=ocp.args.JsonSave(loop)))

    def has_best(self) -> bool:
        return self.best.latest_step() is not None

    def restore_best(self, target_state: Any) -> Any:
        self.best.wait_until_finished()
        restored = self.best.restore(
            self.best.latest_step(),
            args=ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(target_state))),
        )
        return restored.state

    def close(self) -> None:
        for manager in (self.latest, self.best):
            manager.wait_until_finished()
            manager.close()
