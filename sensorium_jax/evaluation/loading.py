"""Trained models back from their workdirs: the run's config, its mice, the checkpoint, and ensembles of runs.

``experiments.train`` writes two small files next to the checkpoints so that a run can be rebuilt without
remembering the command line:

* ``config.json`` — the full ``ml_collections`` config of the run;
* ``mice.json`` — the sessions the model was trained on, in model order: folder name (the benchmark's mouse
  id), absolute path, number of neurons and their ``unit_ids``.

:func:`load_model` rebuilds the model from both and restores the best (or latest) checkpoint; an
:class:`Ensemble` of several such models predicts the mean of its members. Everything that can be wrong about
the inputs — no checkpoint, a data folder with other neurons, a mouse the model never saw — is raised as
:class:`ModelDataMismatch` or ``FileNotFoundError`` naming the file and the problem.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from sensorium_jax.data import layout
from sensorium_jax.data.reader import Session, load_small
from sensorium_jax.models.model import MiceInfo
from sensorium_jax.models.registry import build_model
from sensorium_jax.training import step as steps

CONFIG_FILE = "config.json"
MICE_FILE = "mice.json"
CHECKPOINT_KINDS = ("best", "latest")
_CHECKPOINT_DIRS = {"best": "best", "latest": "checkpoints"}


class ModelDataMismatch(ValueError):
    """The data given for evaluation do not fit the model (a mouse it never saw, other neurons)."""


# ----------------------------------------------------------------------------------------------------------------
# What a run writes


def _tuples(value: Any) -> Any:
    """JSON gives lists where the configs hold tuples (channel lists, SyntheticConfig fields)."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def config_from_json(text: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(_tuples(json.loads(text)))


def resolve_session_paths(data_config: ml_collections.ConfigDict | dict) -> list[Path]:
    """The session folders named by ``data.paths`` (comma-separated folders or globs) in the order training
    uses them, else those of the built-in synthetic dataset (generated on first use). Folders are not opened."""
    paths_spec = data_config["paths"] if "paths" in data_config else ""
    if paths_spec:
        return parse_paths(str(paths_spec))
    from sensorium_jax.data import synthetic  # only needed without real data

    return [Path(p) for p in synthetic.ensure_dataset(data_config["cache_dir"], _synthetic_config(data_config))]


def _synthetic_config(data_config) -> Any:
    from sensorium_jax.data import synthetic

    overrides = data_config["synthetic"] if "synthetic" in data_config else {}
    return synthetic.SyntheticConfig(**_tuples(dict(overrides)))


def glob_folders(pattern: str) -> list[Path]:
    """Folders matching a glob, relative or absolute (``Path.glob`` takes only relative patterns)."""
    path = Path(pattern)
    root = Path(path.anchor) if path.is_absolute() else Path()
    relative = str(path.relative_to(path.anchor)) if path.is_absolute() else pattern
    return sorted(p for p in root.glob(relative) if p.is_dir())


def parse_paths(spec: str) -> list[Path]:
    """``"a,b/*"`` → folders; a glob that matches nothing or a missing folder is an error naming it."""
    paths: list[Path] = []
    for pattern in spec.split(","):
        pattern = pattern.strip()
        if not pattern:
            continue
        if any(c in pattern for c in "*?["):
            matches = glob_folders(pattern)
            if not matches:
                raise FileNotFoundError(f"no session folder matches {pattern!r}")
            paths.extend(matches)
        else:
            if not Path(pattern).is_dir():
                raise FileNotFoundError(f"{pattern}: session folder does not exist")
            paths.append(Path(pattern))
    if not paths:
        raise FileNotFoundError(f"no session folder in {spec!r}")
    return paths


def write_run_info(config: ml_collections.ConfigDict, workdir: str | Path) -> list[Path]:
    """Write ``config.json`` and ``mice.json`` into ``workdir`` (called by ``experiments.train`` before training).

    Returns the session paths. Reads only each session's ``meta/neurons/unit_ids.npy``.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    paths = resolve_session_paths(config.data)
    mice = []
    for path in paths:
        unit_ids = np.asarray(load_small(layout.unit_ids_path(path), "neuron ids"))
        mice.append(
            {
                "name": path.name,
                "path": str(path.absolute()),
                "num_neurons": int(unit_ids.shape[0]),
                "unit_ids": [int(u) for u in unit_ids.reshape(-1)],
            }
        )
    _atomic_write(workdir / CONFIG_FILE, config.to_json(indent=1))
    _atomic_write(workdir / MICE_FILE, json.dumps({"mice": mice}, indent=1))
    return paths


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(text + "\n")
    temporary.replace(path)


@dataclasses.dataclass(frozen=True)
class MouseInfo:
    name: str
    path: str
    num_neurons: int
    unit_ids: np.ndarray


def read_run_info(workdir: str | Path) -> tuple[ml_collections.ConfigDict, list[MouseInfo]]:
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise FileNotFoundError(f"{workdir}: workdir does not exist")
    config_path = workdir / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path}: missing — the run's config is needed to rebuild the model "
            "(experiments.train writes it at start-up; re-run the training command with this workdir to resume "
            "and write it)"
        )
    config = config_from_json(config_path.read_text())
    mice_path = workdir / MICE_FILE
    if mice_path.is_file():
        entries = json.loads(mice_path.read_text())["mice"]
    else:  # a run from before mice.json: derive it from the config's data (must still be where it was)
        entries = []
        for path in resolve_session_paths(config.data):
            ids = np.asarray(load_small(layout.unit_ids_path(path), "neuron ids")).reshape(-1)
            entries.append({"name": path.name, "path": str(path), "num_neurons": len(ids), "unit_ids": ids})
    mice = [
        MouseInfo(e["name"], e["path"], int(e["num_neurons"]), np.asarray(e["unit_ids"], np.int64)) for e in entries
    ]
    return config, mice


# ----------------------------------------------------------------------------------------------------------------
# One trained model


def _latest_step(directory: Path) -> int | None:
    if not directory.is_dir():
        return None
    manager = ocp.CheckpointManager(
        directory.absolute(),
        options=ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0, max_to_keep=None),
        item_names=("state",),
    )
    step = manager.latest_step()
    manager.close()
    return step


def find_checkpoint(workdir: str | Path, kind: str = "best") -> tuple[Path, int]:
    """``(checkpoint folder, step)``: ``best/`` (falling back to ``checkpoints/`` when no best was saved yet,
    e.g. a run killed in its first epoch) or ``checkpoints/`` for ``kind="latest"``."""
    if kind not in CHECKPOINT_KINDS:
        raise ValueError(f"checkpoint kind must be one of {CHECKPOINT_KINDS}, got {kind!r}")
    workdir = Path(workdir)
    order = ("best", "latest") if kind == "best" else ("latest",)
    for name in order:
        directory = workdir / _CHECKPOINT_DIRS[name]
        step = _latest_step(directory)
        if step is not None:
            if name != kind:
                from absl import logging

                logging.warning("%s: no best checkpoint yet; using the latest (step %d)", workdir, step)
            return directory, step
    looked = " and ".join(f"{_CHECKPOINT_DIRS[n]}/" for n in order)
    raise FileNotFoundError(f"{workdir}: no checkpoint (looked in {looked})")


@dataclasses.dataclass
class TrainedModel:
    """A restored model and its jitted inference; mice in training order."""

    workdir: Path
    config: ml_collections.ConfigDict
    mice: list[MouseInfo]
    graphdef: Any
    state: steps.TrainState
    burn_in: int
    step: int
    checkpoint: Path

    def __post_init__(self):
        self._predict = steps.make_predict(self.graphdef)
        self._index = {m.name: i for i, m in enumerate(self.mice)}

    @property
    def name(self) -> str:
        return self.workdir.name

    @property
    def mouse_names(self) -> list[str]:
        return [m.name for m in self.mice]

    def mouse_index(self, name: str) -> int:
        if name not in self._index:
            raise ModelDataMismatch(
                f"mouse {name!r} is absent from the model in {self.workdir} (trained on {self.mouse_names})"
            )
        return self._index[name]

    def check_session(self, session: Session) -> None:
        """The session's neurons must be the very ones the model reads out, in the same order."""
        mouse = self.mice[self.mouse_index(session.name)]
        ids_file = layout.unit_ids_path(session.path)
        if session.num_neurons != mouse.num_neurons:
            raise ModelDataMismatch(
                f"{ids_file}: {session.num_neurons} neurons, but the model in {self.workdir} reads out "
                f"{mouse.num_neurons} for mouse {session.name!r}"
            )
        if not np.array_equal(np.asarray(session.unit_ids).astype(np.int64), mouse.unit_ids):
            raise ModelDataMismatch(
                f"{ids_file}: the neuron ids differ from those the model in {self.workdir} was trained on "
                f"for mouse {session.name!r}"
            )

    def predict(self, mouse_name: str, videos: np.ndarray, behavior: np.ndarray, pupil_center: np.ndarray):
        """``videos (E, T, H, W)`` … → ``(E, T − burn_in, N_mouse)`` numpy, aligned to the last frames."""
        mouse = self.mouse_index(mouse_name)
        out = self._predict(self.state, jnp.int32(mouse), videos, behavior, pupil_center)
        return np.asarray(out)[..., : self.mice[mouse].num_neurons]

    def predict_members(self, mouse_name: str, videos, behavior, pupil_center) -> list[np.ndarray]:
        """The same interface as :meth:`Ensemble.predict_members`: a one-member list."""
        return [self.predict(mouse_name, videos, behavior, pupil_center)]

    @property
    def members(self) -> list[TrainedModel]:
        return [self]

    def readout_positions(self, mouse_name: str) -> np.ndarray:
        """Mean readout positions (N, 2) in the core's [−1, 1] feature-map grid (x = width, y = height)."""
        params, batch_stats = steps.inference_weights(self.state)  # the EMA weights when the run kept them
        model = nnx.merge(self.graphdef, params, batch_stats, self.state.constants)
        mouse = self.mouse_index(mouse_name)
        return np.asarray(model.readouts.mean_positions())[mouse, : self.mice[mouse].num_neurons]


def _placeholder_mice(mice: Sequence[MouseInfo]) -> MiceInfo:
    # Only the shapes matter: positions, masks and biases are overwritten by the checkpoint. Distinct random
    # coordinates keep the constructor's normalisation (divide by max |x|) finite.
    rng = np.random.default_rng(0)
    return MiceInfo(
        names=tuple(m.name for m in mice),
        coordinates=tuple(rng.uniform(-1, 1, (m.num_neurons, 3)).astype(np.float32) for m in mice),
        mean_responses=tuple(np.zeros(m.num_neurons, np.float32) for m in mice),
    )


def load_model(workdir: str | Path, checkpoint: str = "best") -> TrainedModel:
    """Rebuild a run's model from ``config.json``/``mice.json`` and restore its best (or latest) checkpoint."""
    workdir = Path(workdir)
    config, mice = read_run_info(workdir)
    directory, step = find_checkpoint(workdir, checkpoint)
    model = build_model(config.model, _placeholder_mice(mice), task=config.get("task", "video"), seed=config.seed)
    tx = steps.make_optimizer(config.optim, nnx.state(model, nnx.Param))
    # Runs with train.ema_decay > 0 saved an EmaTrainState; its EMA weights are what predict() uses.
    ema = (config.get("train") or {}).get("ema_decay", 0.0) > 0
    graphdef, target = steps.create_train_state(model, tx, config.seed, ema=ema)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    manager = ocp.CheckpointManager(
        directory.absolute(),
        options=ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0, max_to_keep=None),
        item_names=("state",),
    )
    try:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    except Exception as error:  # a config that no longer matches the saved tree, a damaged checkpoint
        raise ValueError(
            f"{directory / str(step)}: cannot restore the checkpoint into the run's model ({error})"
        ) from error
    finally:
        manager.close()
    return TrainedModel(workdir, config, mice, graphdef, restored.state, model.burn_in, step, directory / str(step))


# ----------------------------------------------------------------------------------------------------------------
# Ensembles


class Ensemble:
    """Several trained models (seeds, folds, configs) whose prediction is the mean of their predictions.

    Members may have different burn-ins: each predicts the last ``T − burn_in_i`` frames, the ensemble the last
    ``T − max(burn_in_i)``. Every mouse must be known to every member with the same neurons.
    """

    def __init__(self, members: Sequence[TrainedModel]):
        if not members:
            raise ValueError("an ensemble needs at least one model")
        self.members = list(members)
        self.burn_in = max(m.burn_in for m in self.members)
        first = self.members[0]
        for member in self.members[1:]:
            for mouse in member.mice:
                if mouse.name in first.mouse_names:
                    reference = first.mice[first.mouse_index(mouse.name)]
                    if not np.array_equal(reference.unit_ids, mouse.unit_ids):
                        raise ModelDataMismatch(
                            f"mouse {mouse.name!r}: {member.workdir} and {first.workdir} read out different "
                            "neurons; they cannot be averaged"
                        )

    @property
    def name(self) -> str:
        return "+".join(m.name for m in self.members)

    @property
    def mouse_names(self) -> list[str]:
        """Mice every member knows, in the first member's order."""
        return [n for n in self.members[0].mouse_names if all(n in m.mouse_names for m in self.members[1:])]

    def check_session(self, session: Session) -> None:
        for member in self.members:
            member.check_session(session)

    def predict_members(self, mouse_name: str, videos, behavior, pupil_center) -> list[np.ndarray]:
        """Every member's prediction cut to the ensemble's frames: list of ``(E, T − burn_in, N)``."""
        t_out = videos.shape[1] - self.burn_in
        return [m.predict(mouse_name, videos, behavior, pupil_center)[:, -t_out:] for m in self.members]

    def predict(self, mouse_name: str, videos, behavior, pupil_center) -> np.ndarray:
        return np.mean(self.predict_members(mouse_name, videos, behavior, pupil_center), axis=0)

    def readout_positions(self, mouse_name: str) -> np.ndarray:
        return self.members[0].readout_positions(mouse_name)


def load_ensemble(workdirs: Sequence[str | Path], checkpoint: str = "best") -> Ensemble:
    """An :class:`Ensemble` of one or more workdirs (one workdir is the single model)."""
    return Ensemble([load_model(w, checkpoint) for w in workdirs])


def parse_workdirs(spec: str) -> list[Path]:
    """``--workdir=A,B,C`` (globs allowed, e.g. ``runs/seed*``) → the run folders."""
    workdirs: list[Path] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if any(c in part for c in "*?["):
            matches = [p for p in glob_folders(part) if (p / CONFIG_FILE).is_file()]
            if not matches:
                raise FileNotFoundError(f"no run folder (with {CONFIG_FILE}) matches {part!r}")
            workdirs.extend(matches)
        else:
            workdirs.append(Path(part))
    if not workdirs:
        raise ValueError("--workdir names no run folder")
    return workdirs
