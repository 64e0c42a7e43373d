"""Every reach into a private name of Lightning, torch or jsonargparse, in one place.

lit_explain needs a few things these libraries keep private (a logger's chosen version, the checkpoint
schedule of a ModelCheckpoint, a scheduler's last rates, ...). Each one is wrapped here, so that an upgrade
that renames one breaks a single module, and ``tests/foundation/test_package_structure.py`` checks that every name
listed in :data:`PRIVATE_NAMES` still exists in the installed versions (an upgrade fails loudly there, not
in the middle of a run). ``tests/foundation/test_package_structure.py`` also refuses private names anywhere else.

Only torch is imported at module level (others inside the functions that need them): :mod:`lit_explain.explain`
(pure PyTorch, no Lightning) uses this module too.
"""

from __future__ import annotations

from collections.abc import Callable, ItemsView, Sequence
from typing import Any

from torch import nn

# Where each private name below lives, for the version test: (module, class, attribute).
# ``instance`` marks attributes set in ``__init__`` (the test builds an object to look for them).
PRIVATE_NAMES: tuple[tuple[str, str, str], ...] = (
    ("lightning.pytorch.loggers", "TensorBoardLogger", "_version"),  # instance
    ("lightning.pytorch.loggers", "TensorBoardLogger", "_kwargs"),  # instance
    ("lightning.pytorch.callbacks", "ModelCheckpoint", "_every_n_train_steps"),  # instance
    ("lightning.pytorch.callbacks", "ModelCheckpoint", "_every_n_epochs"),  # instance
    ("lightning.pytorch.callbacks", "ModelCheckpoint", "_train_time_interval"),  # instance
    ("lightning.pytorch.callbacks", "ModelCheckpoint", "_save_on_train_epoch_end"),  # instance
    ("lightning.pytorch", "LightningModule", "_trainer"),  # instance
    ("lightning.pytorch", "Callback", "_generate_state_key"),
    ("lightning.pytorch.cli", "LightningCLI", "_parse_ckpt_path"),
    ("lightning.pytorch.cli", "LightningCLI", "_run_subcommand"),
    ("torch.utils.tensorboard", "SummaryWriter", "_get_file_writer"),
    ("torch.optim.lr_scheduler", "LRScheduler", "_last_lr"),  # instance
    ("torch.optim.lr_scheduler", "SequentialLR", "_schedulers"),  # instance
    ("torch.optim.lr_scheduler", "ChainedScheduler", "_schedulers"),  # instance
    ("torch.nn.modules.batchnorm", "_NormBase", ""),  # the class itself
    ("torch.nn", "Module", "_modules"),  # instance
    # Not private, but internal: a module-level function that use_fast_tensorboard_crc replaces (the
    # "class" slot holds the function, the empty attribute means "the object itself").
    ("tensorboard.summary.writer.record_writer", "masked_crc32c", ""),
)

# Keyword arguments lit_explain passes that are private: (module, class, method, parameter).
PRIVATE_PARAMETERS: tuple[tuple[str, str, str, str], ...] = (
    ("jsonargparse", "ArgumentParser", "parse_args", "_skip_validation"),
)

# LightningCLI methods lit_explain.cli.LitExplainCLI overrides (and calls through ``super()``):
# ``_parse_ckpt_path`` to read --ckpt_path with weights_only and early, ``_run_subcommand`` to guard
# the run folder. The version test checks that LightningCLI still defines and calls both.
LIGHTNING_CLI_OVERRIDES: tuple[str, ...] = ("_parse_ckpt_path", "_run_subcommand")

# Base class of BatchNorm*d, SyncBatchNorm, LazyBatchNorm*d and InstanceNorm*d: the norm layers that
# take no weight decay (public classes would have to be listed one by one, and new ones missed).
NormBase: type[nn.Module] = nn.modules.batchnorm._NormBase

# The key under which an LR scheduler's ``state_dict()`` holds its last rates.
SCHEDULER_LAST_LR_KEY = "_last_lr"


def attached_trainer(module: Any) -> Any | None:
    """The trainer a LightningModule is attached to, or None (``module.trainer`` raises when detached)."""
    return getattr(module, "_trainer", None)


def callback_state_key(callback: Any, **settings: Any) -> str:
    """A callback's ``state_key`` from its settings, as Lightning's own callbacks build theirs.

    Two instances with different settings then keep separate states in a checkpoint.
    """
    return callback._generate_state_key(**settings)


def tensorboard_version_is_set(logger: Any) -> bool:
    """Whether a TensorBoardLogger's version was chosen (by the user or by a first ``log_dir`` access)."""
    return logger._version is not None


def continue_tensorboard_version(logger: Any, version: str, purge_step: int) -> None:
    """Make a TensorBoardLogger write into run folder ``version``, dropping events from ``purge_step`` on."""
    logger._version = version
    # Passed on to the SummaryWriter, created lazily on first use.
    logger._kwargs["purge_step"] = purge_step


def checkpoint_schedule(callback: Any) -> dict[str, Any]:
    """When a ModelCheckpoint saves, as its constructor's keyword arguments (none is public)."""
    return {
        "every_n_train_steps": callback._every_n_train_steps,
        "every_n_epochs": callback._every_n_epochs,
        "train_time_interval": callback._train_time_interval,
        "save_on_train_epoch_end": callback._save_on_train_epoch_end,
    }


def summary_file_writer(writer: Any) -> Callable[[], Any] | None:
    """A SummaryWriter's file-writer getter (writes raw summaries), or None for a writer without one."""
    return getattr(writer, "_get_file_writer", None)


def nested_schedulers(scheduler: Any) -> Sequence[Any]:
    """The schedulers inside a SequentialLR or ChainedScheduler; empty for any other scheduler."""
    return getattr(scheduler, "_schedulers", None) or []


def extend_last_lr(scheduler: Any, rates: Sequence[float]) -> None:
    """Append rates for new parameter groups to a scheduler's last rates (it zips them with the groups)."""
    if hasattr(scheduler, "_last_lr"):
        scheduler._last_lr += list(rates)


def scheduler_state_last_lr(state: dict[str, Any]) -> Any:
    """The last rates recorded in an LR scheduler's ``state_dict()``, or None."""
    return state.get(SCHEDULER_LAST_LR_KEY)


def child_items(module: nn.Module) -> ItemsView[str, nn.Module | None]:
    """A module's registered children, name -> module, in order (duplicates and None entries kept)."""
    return module._modules.items()


def parse_args_unvalidated(parser: Any, args: Any) -> Any:
    """``parser.parse_args`` without jsonargparse's validation, for a config completed before validating."""
    return parser.parse_args(args, _skip_validation=True)


def _masked_crc32c_c(data: bytes) -> int:
    """TensorBoard's masked CRC32C of a record (as ``tensorflow_stub.pywrap_tensorflow.masked_crc32c``)."""
    import crc32c

    x = crc32c.crc32c(data)
    # Masking to 32 bits at the end equals masking each step: additions only carry upwards.
    return (((x >> 15) | (x << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def use_fast_tensorboard_crc() -> bool:
    """Make TensorBoard's event files checksum records with the C ``crc32c`` package, where installed.

    Without TensorFlow, tensorboard's ``RecordWriter`` computes each record's CRC32C in pure Python, byte
    by byte (about 3 MB/s): a 1 MB image summary costs 0.3 s of CPU in the event writer's thread,
    holding the GIL all along, so the training thread crawls meanwhile. The ``crc32c`` package (the
    ``fast-tensorboard`` extra) computes the same checksum in C (GB/s, GIL released for large records).
    Safe to call repeatedly; without the package nothing changes.

    Returns:
        Whether records are now checksummed by the C implementation.

    Example:
        >>> use_fast_tensorboard_crc()  # doctest: +SKIP
        True
    """
    try:
        import crc32c  # noqa: F401
    except ImportError:
        return False
    from tensorboard.summary.writer import record_writer

    # Replacing the module global is enough: RecordWriter.write looks the name up at every call.
    record_writer.masked_crc32c = _masked_crc32c_c
    return True
