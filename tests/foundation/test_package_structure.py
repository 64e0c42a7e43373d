"""The package's shape, checked from its source: no import circle, no private Lightning/torch names
outside :mod:`lit_explain.compat`, and compat's private names still present in the installed versions."""

from __future__ import annotations

import ast
import importlib
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

from lit_explain import compat

PACKAGE = Path(__file__).resolve().parents[2] / "lit_explain"
COMPAT = PACKAGE / "compat.py"
# Third-party packages whose private names must go through compat (Lightning's parser is jsonargparse).
GUARDED = ("lightning", "torch", "torchvision", "torchmetrics", "timm", "jsonargparse", "tensorboard")
# Private names outside compat that are justified, as (file relative to lit_explain/, name): why.
ALLOWED: dict[tuple[str, str], str] = {
    # numpy, not Lightning/torch: the CIFAR-100 pickles' reconstruct functions, allow-listed by name for
    # the weights_only unpickler (numpy 1 and 2 spell the module differently, both are handled there).
    ("data/cifar100.py", "_reconstruct"): "numpy pickle allow-list",
    ("data/cifar100.py", "_frombuffer"): "numpy pickle allow-list",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _trees() -> Iterator[tuple[str, Path, ast.Module]]:
    for name, path in MODULES.items():
        yield name, path, ast.parse(path.read_text(), str(path))


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported_modules(module: str, path: Path, tree: ast.Module) -> set[str]:
    """lit_explain modules ``module`` imports: at module level and inside functions (lazy imports).

    Lazy imports count: a function-level import only postpones a circle, the two modules still need each
    other (the audit's ``run.audit_checkpoint`` shim was such a case). ``if TYPE_CHECKING:`` blocks do not
    run and are skipped. ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to
    ``pkg``; importing ``a.b.c`` is an edge to ``a.b.c`` only (its parent packages are imported first by
    Python itself, and a package importing its own submodules is the normal layout, not a circle).
    """
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    found.add(full if full in MODULES else base)
            pending.append(child)
    return {name for name in found if name in MODULES and name != module}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as a list of modules, or None when it has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


def test_no_import_circle() -> None:
    graph = {name: _imported_modules(name, path, tree) for name, path, tree in _trees()}
    assert "lit_explain.audit.run" in graph and graph["lit_explain.audit.checkpoint"]  # the walk saw them
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_circle_check_finds_a_circle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


# -- private names ------------------------------------------------------------------------------------


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _guarded(module: str | None) -> bool:
    return bool(module) and module.split(".")[0] in GUARDED


def _class_defined_names(tree: ast.Module) -> dict[str, tuple[set[str], list[str]]]:
    """Per class of a module: names it defines itself (methods, class and ``self.x`` attributes), and the
    simple names of its bases."""
    classes: dict[str, tuple[set[str], list[str]]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        names: set[str] = set()
        for inner in ast.walk(node):
            if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names.add(inner.name)
            elif isinstance(inner, ast.Name) and isinstance(inner.ctx, ast.Store):
                names.add(inner.id)
            elif isinstance(inner, ast.Attribute) and isinstance(inner.ctx, (ast.Store, ast.Del)):
                names.add(inner.attr)
        bases = [ast.unparse(b).rpartition(".")[2] for b in node.bases]
        classes[node.name] = (names, bases)
    return classes


ALL_CLASSES: dict[str, tuple[set[str], list[str]]] = {}
for _name, _path, _tree in _trees():
    ALL_CLASSES.update(_class_defined_names(_tree))


def _own_names(cls: str, seen: frozenset[str] = frozenset()) -> set[str]:
    """Names a lit_explain class or its lit_explain ancestors define (anything else is inherited)."""
    if cls not in ALL_CLASSES or cls in seen:
        return set()
    names, bases = ALL_CLASSES[cls]
    return names.union(*(_own_names(b, seen | {cls}) for b in bases))


def _private_uses(path: Path, tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, name) for each private name of another object, module or base class used in ``tree``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and _guarded(node.module):
            if any(_is_private(part) for part in node.module.split(".")):
                yield node.lineno, node.module
            yield from ((node.lineno, a.name) for a in node.names if _is_private(a.name))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if _guarded(alias.name) and any(_is_private(p) for p in alias.name.split(".")):
                    yield node.lineno, alias.name
        elif isinstance(node, ast.Attribute) and _is_private(node.attr):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue  # checked per class below: a private name of the class's own
            if _calls_super(owner) and node.attr in compat.LIGHTNING_CLI_OVERRIDES:
                continue  # the parent of an override compat declares (and tests)
            yield node.lineno, node.attr
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name in ("getattr", "hasattr", "setattr", "delattr") and len(node.args) > 1:
                text = node.args[1]
                if isinstance(text, ast.Constant) and isinstance(text.value, str) and _is_private(text.value):
                    yield node.lineno, text.value
            yield from ((node.lineno, k.arg) for k in node.keywords if k.arg and _is_private(k.arg))
    yield from _inherited_private_uses(tree)


def _calls_super(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and ast.unparse(node.func) == "super"


def _inherited_private_uses(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """``self._x`` where no lit_explain class in the hierarchy defines ``_x``: a base class's private name
    (``self._trainer`` in a LightningModule, ``self._last_lr`` in an LR scheduler)."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        own = _own_names(node.name)
        for inner in ast.walk(node):
            if (
                isinstance(inner, ast.Attribute)
                and isinstance(inner.value, ast.Name)
                and inner.value.id in ("self", "cls")
                and _is_private(inner.attr)
                and inner.attr not in own
            ):
                yield inner.lineno, inner.attr


def _overridden_privates() -> Iterator[tuple[str, str]]:
    """(class, method) for each lit_explain method that overrides a private method of a third-party base."""
    for name in MODULES:
        module = importlib.import_module(name)
        for cls in vars(module).values():
            if not inspect.isclass(cls) or cls.__module__ != name:
                continue
            foreign = [b for b in cls.__mro__[1:] if not b.__module__.startswith("lit_explain")]
            for attr, value in vars(cls).items():
                # Methods written in lit_explain (not data such as abc's or autograd's bookkeeping).
                method = isinstance(value, (staticmethod, classmethod, property)) or inspect.isfunction(value)
                if method and _is_private(attr) and any(attr in vars(b) for b in foreign):
                    yield cls.__qualname__, attr


def test_no_private_lightning_or_torch_name_outside_compat() -> None:
    found = []
    for _, path, tree in _trees():
        if path == COMPAT:
            continue
        rel = path.relative_to(PACKAGE).as_posix()
        found += [
            f"{rel}:{line}: {name}" for line, name in _private_uses(path, tree) if (rel, name) not in ALLOWED
        ]
    assert not found, "private names outside lit_explain/compat.py:\n" + "\n".join(found)


def test_private_method_overrides_are_declared_in_compat() -> None:
    overrides = set(_overridden_privates())
    assert ("LitExplainCLI", "_run_subcommand") in overrides  # the scan sees them
    assert {method for _, method in overrides} <= set(compat.LIGHTNING_CLI_OVERRIDES), overrides


def test_the_scan_finds_private_reaches() -> None:
    source = """
from torch.nn.modules.batchnorm import _NormBase
import torch._dynamo
class Net(LightningModule):
    def __init__(self):
        self._mine = 1
    def f(self, logger, parser):
        logger._version = "x"
        getattr(logger, "_kwargs")
        parser.parse_args([], _skip_validation=True)
        return self._trainer, self._mine
"""
    tree = ast.parse(source)
    ALL_CLASSES.update(_class_defined_names(tree))
    try:
        names = sorted(name for _, name in _private_uses(Path("x.py"), tree))
    finally:
        ALL_CLASSES.pop("Net")
    assert names == ["_NormBase", "_kwargs", "_skip_validation", "_trainer", "_version", "torch._dynamo"]


# -- compat against the installed versions -------------------------------------------------------------


def _instances() -> dict[str, object]:
    """One object of each class whose private names are instance attributes (set in ``__init__``)."""
    import torch
    from lightning.pytorch import LightningModule
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger
    from matplotlib.backends.backend_agg import RendererAgg

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    step = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    return {
        "TensorBoardLogger": TensorBoardLogger("unused_dir"),
        "ModelCheckpoint": ModelCheckpoint(),
        "LightningModule": LightningModule(),
        "LRScheduler": step,
        "SequentialLR": torch.optim.lr_scheduler.SequentialLR(optimizer, [step], milestones=[]),
        "ChainedScheduler": torch.optim.lr_scheduler.ChainedScheduler([step]),
        "Module": torch.nn.Linear(1, 1),
        "RendererAgg": RendererAgg(10, 10, 72),
    }


@pytest.mark.parametrize("where", compat.PRIVATE_NAMES, ids=lambda w: f"{w[1]}.{w[2]}".rstrip("."))
def test_compat_private_names_exist_in_installed_versions(where: tuple[str, str, str]) -> None:
    module_name, class_name, attr = where
    cls = getattr(importlib.import_module(module_name), class_name)
    if not attr:
        return  # the class itself is the private name: found
    instances = _instances()
    owner = instances.get(class_name, cls)
    assert hasattr(cls, attr) or hasattr(owner, attr), f"{module_name}.{class_name} has no {attr} any more"


@pytest.mark.parametrize("where", compat.PRIVATE_PARAMETERS, ids=lambda w: f"{w[1]}.{w[2]}({w[3]})")
def test_compat_private_parameters_exist(where: tuple[str, str, str, str]) -> None:
    module_name, class_name, method, parameter = where
    function = getattr(getattr(importlib.import_module(module_name), class_name), method)
    assert parameter in inspect.signature(function).parameters


@pytest.mark.parametrize("method", compat.LIGHTNING_CLI_OVERRIDES)
def test_lightning_cli_still_defines_and_calls_the_overridden_methods(method: str) -> None:
    from lightning.pytorch.cli import LightningCLI

    assert callable(getattr(LightningCLI, method, None)), f"LightningCLI.{method} is gone"
    # An override Lightning no longer calls would be dead code: its caller must still be there.
    assert f"self.{method}(" in inspect.getsource(LightningCLI), f"LightningCLI no longer calls {method}"


def test_compat_helpers_on_real_objects(tmp_path: Path) -> None:
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    logger = TensorBoardLogger(tmp_path)
    assert not compat.tensorboard_version_is_set(logger)
    compat.continue_tensorboard_version(logger, "version_3", purge_step=7)
    assert compat.tensorboard_version_is_set(logger) and logger.version == "version_3"
    schedule = compat.checkpoint_schedule(ModelCheckpoint(every_n_epochs=2))
    assert schedule["every_n_epochs"] == 2
    ModelCheckpoint(**schedule)  # the keys are the constructor's arguments
    assert compat.callback_state_key(ModelCheckpoint(), k=1) == "ModelCheckpoint{'k': 1}"
    assert compat.summary_file_writer(logger.experiment) is not None
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    step = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    assert list(compat.nested_schedulers(step)) == []
    assert list(compat.nested_schedulers(torch.optim.lr_scheduler.ChainedScheduler([step]))) == [step]
    compat.extend_last_lr(step, [0.01])
    assert step.get_last_lr() == [0.1, 0.01]
    assert compat.scheduler_state_last_lr(step.state_dict()) == [0.1, 0.01]
    assert [n for n, _ in compat.child_items(torch.nn.Sequential(torch.nn.ReLU(), torch.nn.ReLU()))] == [
        "0",
        "1",
    ]
    assert issubclass(torch.nn.BatchNorm2d, compat.NormBase) and issubclass(
        torch.nn.InstanceNorm2d, compat.NormBase
    )
    assert compat.attached_trainer(torch.nn.Linear(1, 1)) is None


def test_test_files_have_unique_basenames() -> None:
    # pytest imports test modules by basename (rootdir-relative packages are not used here): two files
    # with one name stop the whole run at collection, as tests/serve/test_structure.py once did.
    tests = Path(__file__).resolve().parents[1]
    names: dict[str, list[str]] = {}
    for path in tests.rglob("test_*.py"):
        names.setdefault(path.name, []).append(str(path.relative_to(tests)))
    assert {name: paths for name, paths in names.items() if len(paths) > 1} == {}
