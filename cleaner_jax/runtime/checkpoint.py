"""Crash-safe training checkpoints: params, optimizer state and a small JSON item, via orbax.

A checkpoint is one orbax step directory ``<directory>/<step>/`` (the trainer passes
``<workdir>/checkpoints``) with three items: ``params`` (an ``nnx.State`` or any pytree of arrays,
possibly sharded over a mesh), ``opt_state`` (an optax pytree) and ``meta`` (JSON: the step, the
data-iterator state, RNG state, anything small).
Saving is asynchronous (the device-to-host copy finishes before ``save`` returns, so the caller may
donate or delete its buffers right after); ``wait()`` / ``close()`` flush pending writes.

Restoring targets an abstract tree (``jax.ShapeDtypeStruct`` leaves with shardings, or concrete
arrays whose shardings are reused), so a checkpoint written on one topology loads onto another.
Without an explicit step, restore walks from the newest step down: a step directory that lacks
orbax's commit marker or whose items fail to load is skipped with a warning naming the problem,
and once an older step loads, the skipped newer ones are moved to the sibling directory
``<directory>_corrupt/`` so that the resumed run can save those step numbers again. Nothing is
moved when no step loads (that points at a wrong abstract tree as much as at corruption).
"""

from __future__ import annotations

import json
import os
import pathlib
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import orbax.checkpoint as ocp
from absl import logging

PARAMS = "params"
OPT_STATE = "opt_state"
META = "meta"
# Written by orbax 0.12.x as the last file of a step before the atomic rename; on filesystems
# without atomic rename (GCS) it is the only sign that a step is complete.
_COMMIT_MARKER = "commit_success.txt"
_QUARANTINE_SUFFIX = "_corrupt"


class CheckpointNotFoundError(FileNotFoundError):
    """No checkpoint exists in the workdir."""


class CheckpointRestoreError(RuntimeError):
    """Checkpoints exist but none of the candidates could be restored."""


class RestoredCheckpoint(NamedTuple):
    """What ``Checkpointer.restore`` returns; unpacks as ``params, opt_state, meta``."""

    params: Any
    opt_state: Any
    meta: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def abstract_tree(tree: Any) -> Any:
    """Maps array leaves to ``jax.ShapeDtypeStruct`` keeping their shardings (restore targets)."""
    return jax.tree.map(_to_abstract, tree)


def prng_key_to_json(key: jax.Array) -> dict[str, Any]:
    """Encodes a JAX PRNG key (typed or raw uint32, any batch shape) as a JSON-ready dict."""
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    data = jax.random.key_data(key) if typed else key
    impl = str(jax.random.key_impl(key)) if typed else None
    return {"typed": bool(typed), "impl": impl, "data": jax.device_get(data).tolist()}


def prng_key_from_json(encoded: Mapping[str, Any]) -> jax.Array:
    """Inverse of ``prng_key_to_json``: the same key, bit for bit."""
    data = jax.numpy.asarray(encoded["data"], dtype=jax.numpy.uint32)
    if encoded["typed"]:
        return jax.random.wrap_key_data(data, impl=encoded["impl"])
    return data


class Checkpointer:
    """Saves every ``every`` steps, keeps the newest ``keep``, restores with corruption fallback.

    Args:
      directory: where the step directories go (conventionally ``<workdir>/checkpoints``);
        created if missing.
      keep: how many checkpoints to keep (``None`` keeps all). Keep at least 2 so that a
        corrupt newest checkpoint has a predecessor to fall back to.
      every: save interval in steps; ``save`` only writes steps divisible by it unless forced.
      async_save: write in a background thread after the device-to-host copy.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        keep: int | None = 3,
        every: int = 1,
        async_save: bool = True,
    ):
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be >= 1 or None (keep all), got {keep}.")
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}.")
        self.directory = pathlib.Path(directory).absolute()
        self.quarantine_directory = self.directory.with_name(
            self.directory.name + _QUARANTINE_SUFFIX
        )
        self.every = every
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            save_interval_steps=every,
            enable_async_checkpointing=async_save,
            # Leftover tmp dirs of a save killed midway are never restorable; drop them.
            cleanup_tmp_directories=True,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=(PARAMS, OPT_STATE, META)
        )
        self._closed = False

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def all_steps(self) -> list[int]:
        """Steps with a step directory on disk (finalized by orbax), oldest first."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """Newest step on disk, or None. It may still turn out corrupt on restore."""
        return self._manager.latest_step()

    def should_save(self, step: int) -> bool:
        """Whether ``save(step, ...)`` without ``force`` would write."""
        return self._manager.should_save(step)

    def save(
        self,
        step: int,
        params: Any,
        opt_state: Any,
        meta: Mapping[str, Any] | None = None,
        *,
        force: bool = False,
    ) -> bool:
        """Saves a checkpoint if ``step`` is due (or ``force``); returns whether it saved.

        ``meta`` must be JSON-serializable; ``meta["step"]`` is set to ``step``. A step that is
        not newer than the latest saved one is skipped (returns False), so a forced final save
        right after a periodic save of the same step is harmless.
        """
        meta_json = dict(meta or {})
        if meta_json.setdefault("step", step) != step:
            raise ValueError(f"meta['step']={meta_json['step']} disagrees with step={step}.")
        try:
            json.dumps(meta_json)
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"meta is not JSON-serializable ({e}); convert arrays with .tolist(), numpy "
                "scalars with int()/float(), PRNG keys with prng_key_to_json()."
            ) from e
        latest = self.latest_step()
        if latest is not None and step <= latest:
            if step < latest:
                logging.warning(
                    "Not saving step %d: checkpoint step %d is newer (was the run resumed from "
                    "the wrong step?).",
                    step,
                    latest,
                )
            return False
        if not force and not self._manager.should_save(step):
            return False
        args = ocp.args.Composite(
            **{
                PARAMS: ocp.args.StandardSave(params),
                OPT_STATE: ocp.args.StandardSave(opt_state),
                META: ocp.args.JsonSave(meta_json),
            }
        )
        saved = self._manager.save(step, args=args, force=True)
        if saved:
            logging.info("Saving checkpoint step %d to %s", step, self.directory)
        return saved

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Flushes pending saves and releases orbax's background resources (idempotent)."""
        if self._closed:
            return
        self._manager.wait_until_finished()
        self._manager.close()
        self._closed = True

    def restore(
        self,
        step: int | None = None,
        *,
        abstract_params: Any,
        abstract_opt_state: Any | None = None,
        missing_ok: bool = False,
    ) -> RestoredCheckpoint | None:
        """Restores ``(params, opt_state, meta)``.

        Args:
          step: the step to restore, exactly (any failure raises). ``None``: the newest step that
            restores, falling back past corrupt ones with a warning.
          abstract_params: target tree for the params (``ShapeDtypeStruct`` leaves with the target
            shardings, or concrete arrays whose shapes, dtypes and shardings are used).
          abstract_opt_state: the same for the optimizer state; ``None`` skips restoring it
            (evaluation, export) and ``opt_state`` comes back as ``None``.
          missing_ok: when there is no checkpoint at all, return ``None`` instead of raising
            ``CheckpointNotFoundError``.

        Raises:
          CheckpointNotFoundError: no checkpoint (and not ``missing_ok``), or ``step`` absent.
          CheckpointRestoreError: checkpoints exist but none could be restored.
        """
        self.wait()
        self._manager.reload()
        steps = self.all_steps()
        if step is not None:
            if step not in steps:
                raise CheckpointNotFoundError(
                    f"No checkpoint for step {step} in {self.directory}; available: {steps}."
                )
            problem, restored = self._try_restore(step, abstract_params, abstract_opt_state)
            if restored is None:
                raise CheckpointRestoreError(f"Checkpoint step {step} is unusable: {problem}")
            return restored
        if not steps:
            if missing_ok:
                return None
            raise CheckpointNotFoundError(
                f"No checkpoint in {self.directory}; pass missing_ok=True to start fresh."
            )
        failed: list[tuple[int, str]] = []
        for candidate in reversed(steps):
            problem, restored = self._try_restore(candidate, abstract_params, abstract_opt_state)
            if restored is not None:
                if failed:
                    self._quarantine([s for s, _ in failed])
                return restored
            logging.warning(
                "Checkpoint step %d in %s is unusable, falling back to an older one: %s",
                candidate,
                self.directory,
                problem,
            )
            failed.append((candidate, problem))
        details = "\n".join(f"  step {s}: {p}" for s, p in failed)
        raise CheckpointRestoreError(
            f"None of the checkpoints in {self.directory} could be restored:\n{details}\n"
            "If every step fails the same way, the abstract trees probably do not match what "
            "was saved (model or optimizer config changed?)."
        )

    def _try_restore(
        self, step: int, abstract_params: Any, abstract_opt_state: Any | None
    ) -> tuple[str, RestoredCheckpoint | None]:
        """Returns ("", restored) or (what was wrong, None)."""
        step_dir = self.directory / str(step)
        if not (step_dir / _COMMIT_MARKER).exists():
            return f"{step_dir} has no {_COMMIT_MARKER} (the save did not complete).", None
        wanted = [PARAMS, META] + ([OPT_STATE] if abstract_opt_state is not None else [])
        missing = [name for name in wanted if not (step_dir / name).is_dir()]
        if missing:
            return f"{step_dir} lacks item directories {missing}.", None
        args = {
            PARAMS: ocp.args.StandardRestore(abstract_tree(abstract_params)),
            META: ocp.args.JsonRestore(),
        }
        if abstract_opt_state is not None:
            args[OPT_STATE] = ocp.args.StandardRestore(abstract_tree(abstract_opt_state))
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(**args))
        except Exception as e:  # Any read/decode failure means: try the previous step.
            return _short_error(e), None
        meta = out[META]
        if not isinstance(meta, dict) or meta.get("step") != step:
            return f"meta item {meta!r} does not carry step {step}.", None
        opt_state = out[OPT_STATE] if abstract_opt_state is not None else None
        logging.info("Restored checkpoint step %d from %s", step, self.directory)
        return "", RestoredCheckpoint(out[PARAMS], opt_state, meta)

    def _quarantine(self, steps: list[int]) -> None:
        """Moves unusable step dirs aside (one process renames, all wait) and rescans."""
        if jax.process_index() == 0:
            target_root = self.quarantine_directory
            target_root.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for step in steps:
                target = target_root / f"{step}-{stamp}"
                os.replace(self.directory / str(step), target)
                logging.warning("Moved unusable checkpoint step %d to %s", step, target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("cleaner_jax_checkpoint_quarantine")
        self._manager.reload()


def _to_abstract(leaf: Any) -> Any:
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return leaf
    if isinstance(leaf, jax.Array):
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
    return ocp.utils.to_shape_dtype_struct(leaf)


def _short_error(error: Exception, limit: int = 500) -> str:
    """The error's type and message without tensorstore's multi-kilobyte spec dumps."""
    text = " | ".join(str(error).strip().splitlines()[:3]).split(" [tensorstore_spec")[0]
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{type(error).__name__}: {text}"
