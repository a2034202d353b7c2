"""Registries: every named component (prior, likelihood, guide, network, objective, model kind,
dataset) is found here by name, and nothing else in the library lists names.

A registry maps a name to a factory and a few facts about it (a one-line help text and a set
of capabilities). Configuration validation, the command line's help text and its "did you
mean" suggestions all read the registries, so an entry registered by a user's module works in
recipes and in every command exactly like a built-in one::

    from pyro_vae.registry import PRIORS

    @PRIORS.register("student_t", help="p(z) = Student-t, learned degrees of freedom")
    def build(config, context):           # config: the [model] table; context: what is built
        return StudentTPrior(config.latent_dim)

**Plugins** are Python modules whose import registers entries. They are loaded from

* the recipe's top-level key ``plugins = ["mypkg.priors"]``,
* the ``--plugin MODULE`` flag of every command,
* the ``pyro_vae.plugins`` entry-point group of installed packages (``[project.entry-points.
  "pyro_vae.plugins"] mypkg = "mypkg.priors"`` in the package's ``pyproject.toml``).

A run records the plugins it was trained with in its ``config.toml``. **A run is not trusted**:
anyone can write a run directory or a checkpoint, so nothing that a run's ``config.toml`` or the
configuration saved in its checkpoint names is ever imported. Configurations read inside
:func:`untrusted` (as :func:`pyro_vae.runs.read_run_config` reads every run) may name only
plugins this process has already loaded (from ``--plugin``, an installed package's entry point,
or :func:`load_plugin` called in Python) and ``"module:factory"`` kinds of such plugin modules;
any other raises :class:`UntrustedPluginError`, which names the ``--plugin`` flags that trust it.
See the guide's "Security" page.

The library's own components register themselves the same way, in their own modules
(``priors.py`` registers the priors, ...); :func:`load_builtins` imports those modules the
first time a registry is asked for its names.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import importlib
import functools
import importlib.metadata
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, Iterable, Iterator, Mapping, TypeVar

from pyro_vae.capabilities import check_capabilities
from pyro_vae.errors import ConfigError

#: Entry-point group through which installed packages register plugins.
ENTRY_POINT_GROUP = "pyro_vae.plugins"

#: The library's modules that register its built-in entries (imported on first lookup).
BUILTIN_MODULES = (
    "pyro_vae.priors", "pyro_vae.likelihoods", "pyro_vae.guides", "pyro_vae.networks",
    "pyro_vae.objectives", "pyro_vae.models", "pyro_vae.models.vae",
    "pyro_vae.models.conditional", "pyro_vae.models.quadrants", "pyro_vae.models.discrete",
    "pyro_vae.models.semisupervised", "pyro_vae.data",
    # The kinds' pictures hooks (models hold maths; pictures live in pyro_vae.plots).
    "pyro_vae.plots.conditional", "pyro_vae.plots.quadrants", "pyro_vae.plots.discrete",
    "pyro_vae.plots.semisupervised",
    # What kinds add to their objective (models import no objective) and to the summary at
    # the end of training (the loop imports no application).
    "pyro_vae.kind_objectives", "pyro_vae.kind_summaries",
)

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class BuildContext:
    """What a component's factory may need besides the ``[model]`` table: the image shape,
    the number of pixels P, the training-set size N (``None`` when scoring) and the encoder
    already built (the VampPrior passes pseudo-inputs through it). ``num_classes`` is set
    when a label-conditional kind asks a ``label_conditional`` prior for p(z|y); the encoder is
    then q(z|x, y), called as ``encoder(x, y)``."""

    image_shape: tuple[int, int, int]
    num_data: int | None = None
    encoder: Any = None
    num_classes: int | None = None
    #: The options of the component being built (declared at its registration, set in the
    #: recipe's table of its role, e.g. ``[prior] df = 5``; see :mod:`pyro_vae.options`).
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def num_pixels(self) -> int:
        channels, height, width = self.image_shape
        return channels * height * width


class PluginError(ConfigError):
    """A plugin module that cannot be imported (not installed, or failing on import)."""


class UntrustedPluginError(PluginError):
    """A configuration the user did not write (a run's) names code this process has not been
    told to trust; ``modules`` are the plugin modules to give with ``--plugin`` to trust it."""

    def __init__(self, message: str, modules: Iterable[str]) -> None:
        super().__init__(message)
        self.modules = tuple(modules)


def suggestion(word: str, options: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for the closest of ``options``, or an empty string."""
    close = difflib.get_close_matches(str(word), list(options), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


@dataclass(frozen=True)
class KindHooks:
    """What a model kind supplies to the training loop and the commands besides its factory.

    The loop and the commands name no kind: they call these hooks (the way pythae's trainer
    takes callbacks) and read the kind's capabilities (the way NumPyro's inference asks a
    model what it can do). Every hook is optional; where a kind leaves one out, the loop's
    default applies (shown in brackets).

    * ``display_name``: what the kind is, in words, for messages (["the <name> model"]).
    * ``prepare(config, data, model, objective) -> (objective, state)``: checks and prepares
      the data (e.g. that labels exist) and gives the objective to train with and a state for
      ``batches`` ([the objective that ``[train] objective`` names, no state]).
    * ``initialize(config, data, model)``: what a new run's weights start from beyond the
      factory's, e.g. a trained network copied in; not called on ``--resume``, whose
      checkpoint holds them ([nothing]).
    * ``batches(epoch) -> iterator of steps``: the steps of one epoch, given a
      :class:`pyro_vae.protocol.Epoch`; each step is a function returning ``(loss, batch,
      weight)``: the loss to minimize, the batch shown if it goes non-finite, and the step's
      weight in the epoch's mean ([minibatches of the training set, with labels where the
      kind declares ``labels``, shared out under torchrun]).
    * ``test_summary(model, data, config) -> dict``: the kind's own entries of ``summary.json``
      ([none]).
    * ``run_summary(model, data, run_dir, config) -> dict``: entries of ``summary.json`` that
      the end of training measures with files kept in the run directory (the labelled kinds'
      label fidelity and its classifier; :mod:`pyro_vae.kind_summaries`) ([none]).
    * ``pictures(model, data, run_dir, history, config)``: writes the run's pictures ([samples,
      reconstructions, interpolation and latent map for a kind declaring ``pictures``, the
      ELBO curve otherwise]).
    * ``check(config)``: the kind's own checks of a whole configuration (its ``[kind]``
      options against the prior, guide, network and objective), raising
      :class:`~pyro_vae.errors.ConfigError` in one paragraph ([none]).
    * ``model_defaults(model_table) -> dict``: the kind's own values for ``[model]`` keys that
      a recipe (with its command-line flags) leaves out, given the ``[model]`` table as written
      with the ``[kind]`` options beside its keys ([the ``ModelConfig`` defaults]). A run's ``config.toml`` records every key, so a saved run
      reads back the same.
    """

    display_name: str = ""
    check: Callable[..., Any] | None = None
    prepare: Callable[..., Any] | None = None
    initialize: Callable[..., Any] | None = None
    batches: Callable[..., Any] | None = None
    test_summary: Callable[..., Any] | None = None
    run_summary: Callable[..., Any] | None = None
    pictures: Callable[..., Any] | None = None
    model_defaults: Callable[..., Any] | None = None


@dataclass(frozen=True)
class Entry:
    """One registered name: its factory, help text, capabilities and where it came from."""

    name: str
    factory: Callable[..., Any]
    help: str = ""
    capabilities: frozenset[str] = field(default_factory=frozenset)
    module: str = ""
    #: The plugin module whose import registered this entry ("" for the library's own and
    #: for entries registered by the user's script): what a run must import to rebuild it.
    plugin: str = ""
    #: The options it declares: name -> :class:`pyro_vae.options.Option`.
    options: Mapping[str, Any] = field(default_factory=dict)


class Registry(Generic[F]):
    """Names → factories for one kind of component (``kind`` is e.g. ``"prior"``).

    ``where`` is how configuration errors name the setting, e.g. ``"[model] prior"``.
    """

    def __init__(self, kind: str, where: str,
                 vocabulary: Callable[[Iterable[str], str], frozenset[str]] | None = None):
        self.kind = kind
        self.where = where
        #: Checks the capabilities an entry declares (``None``: any words).
        self.vocabulary = vocabulary
        self._entries: dict[str, Entry] = {}
        self._hooks: dict[str, KindHooks] = {}

    def register(self, name: str, help: str = "", capabilities: Iterable[str] = (),
                 hooks: KindHooks | None = None,
                 options: Mapping[str, Any] | None = None) -> Callable[[F], F]:
        """Decorator: register the decorated factory (a function or a class) as ``name``,
        with its capabilities, (model kinds) its :class:`KindHooks` and the options it
        declares (name -> :class:`pyro_vae.options.Option`; see :mod:`pyro_vae.options`).

        Registering a name twice from different code is refused (a plugin cannot silently
        replace a built-in); re-importing the same module re-registers harmlessly.
        """

        def decorate(factory: F) -> F:
            module = getattr(factory, "__module__", "") or ""
            old = self._entries.get(name)
            if old is not None and (old.module, old.factory.__qualname__) != (
                    module, getattr(factory, "__qualname__", "")):
                raise ConfigError(f"the {self.kind} name {name!r} is registered twice (by "
                                  f"{old.module} and by {module}); choose another name.")
            doc = help or (factory.__doc__ or "").strip().split("\n")[0]
            words = frozenset([capabilities] if isinstance(capabilities, str) else capabilities)
            if self.vocabulary is not None:
                words = self.vocabulary(words, f"the {self.kind} {name!r}")
            self._entries[name] = Entry(name, factory, doc, words, module,
                                        _importing[-1] if _importing else "",
                                        dict(options or {}))
            if hooks is not None:
                self.add_hooks(name, **{f.name: getattr(hooks, f.name)
                                        for f in dataclasses.fields(hooks)
                                        if getattr(hooks, f.name) not in (None, "")})
            return factory

        return decorate

    def add(self, name: str, factory: Callable[..., Any], help: str = "",
            capabilities: Iterable[str] = (), hooks: KindHooks | None = None,
            options: Mapping[str, Any] | None = None) -> None:
        """Register ``factory`` as ``name`` (the non-decorator form)."""
        self.register(name, help, capabilities, hooks, options)(factory)

    def add_hooks(self, name: str, **hooks: Any) -> None:
        """Give the registered ``name`` these hooks (fields of :class:`KindHooks`), keeping
        those it has: how a module other than the kind's own (its pictures, in
        :mod:`pyro_vae.plots`) adds to it."""
        if name not in self._entries:
            raise ConfigError(f"hooks for the {self.kind} {name!r}, which is not registered; "
                              "register it first (import its module).")
        self._hooks[name] = dataclasses.replace(self._hooks.get(name, KindHooks()), **hooks)

    def hooks(self, name: str) -> KindHooks:
        """The hooks of ``name`` (the defaults where it supplies none)."""
        self.entry(name)
        return self._hooks.get(name, KindHooks())

    def registered_names(self) -> tuple[str, ...]:
        """The names registered so far, without loading the built-in modules first."""
        return tuple(self._entries)

    def _loaded(self) -> dict[str, Entry]:
        load_builtins()
        return self._entries

    def __contains__(self, name: object) -> bool:
        return name in self._loaded()

    def __iter__(self) -> Iterator[str]:
        return iter(self.choices())

    def choices(self) -> tuple[str, ...]:
        """Every registered name, built-ins first, in registration order."""
        return tuple(self._loaded())

    def names_with(self, capability: str, present: bool = True) -> str:
        """The names that declare ``capability`` (or, ``present=False``, do not), quoted
        and joined by "or" for a message; "none" where there are none."""
        names = [name for name in self.choices()
                 if (capability in self.capabilities(name)) == present]
        return " or ".join(f"\"{name}\"" for name in names) or "none"

    def entry(self, name: str) -> Entry:
        """The entry called ``name``, or a :class:`ConfigError` listing the choices.

        A name of the form ``"package.module:factory"`` imports that factory and registers it
        under that name (its capabilities and hooks from ``capabilities`` and ``hooks``
        attributes, if any): how a model built in Python is recorded in a run so that every
        command can rebuild it.
        """
        entries = self._loaded()
        if name not in entries and ":" in name:
            factory = import_object(name, f"{self.where} = {name!r}")
            self.add(name, factory, capabilities=getattr(factory, "capabilities", ()),
                     hooks=getattr(factory, "hooks", None),
                     options=getattr(factory, "options", None))
        if name not in entries:
            broken = "".join(f" (The installed package {package!r} declares the plugin "
                             f"{module!r}, which failed to load: {why} Reinstall or uninstall "
                             "that package.)" for package, module, why in _broken_entry_points)
            raise ConfigError(
                f"{self.where} = {name!r} is not one of {', '.join(map(repr, entries))}."
                + suggestion(name, entries)
                + f" A {self.kind} of your own is registered by a plugin module (recipe key "
                "plugins = [\"MODULE\"] or --plugin MODULE); see \"Extending pyro-vae\" in "
                "the README." + broken)
        return entries[name]

    def get(self, name: str) -> Callable[..., Any]:
        """The factory called ``name``."""
        return self.entry(name).factory

    def capabilities(self, name: str) -> frozenset[str]:
        return self.entry(name).capabilities

    def help_text(self) -> str:
        """``name1 | name2 | ...`` for command-line help, without importing the built-in
        modules where it can (they import torch, and ``pyro-vae train --help`` must not take
        seconds): the names registered so far once the built-ins are loaded, else the names
        the built-in modules' source registers (:func:`declared_builtin_names`). Installed
        plugins (entry points) are loaded to list theirs."""
        if not _builtins_loaded and not _has_entry_points():
            try:
                declared = declared_builtin_names()[self.kind]
            except (OSError, SyntaxError):  # no source to read (a bytecode-only install)
                return " | ".join(self.choices())
            return " | ".join([*declared, *(n for n in self._entries if n not in declared)])
        return " | ".join(self.choices())


PRIORS: Registry = Registry("prior", "[model] prior")
LIKELIHOODS: Registry = Registry("likelihood", "[model] likelihood")
GUIDES: Registry = Registry("guide", "[model] guide")
NETWORKS: Registry = Registry("network", "[model] network")
OBJECTIVES: Registry = Registry("objective", "[train] objective")
MODEL_KINDS: Registry = Registry("model kind", "[model] kind", check_capabilities)
DATASETS: Registry = Registry("dataset", "[data] dataset")

_builtins_loaded = False
_loaded_plugins: list[str] = []
#: The plugin modules being imported now (innermost last): who registers an entry.
_importing: list[str] = []
#: The untrusted sources being read now (innermost last): see :func:`untrusted`.
_untrusted: list[str] = []
#: Installed packages' entry points whose plugin failed to import: (package, module, why).
_broken_entry_points: list[tuple[str, str, str]] = []


@contextlib.contextmanager
def untrusted(source: str) -> Iterator[None]:
    """Read configurations inside this block as coming from ``source`` (e.g. a run's
    ``config.toml``), which the user did not write: a plugin it lists must already be loaded
    (or imported), and a ``"module:factory"`` name must point into a plugin module already
    loaded; nothing is imported. Anything else raises :class:`UntrustedPluginError`."""
    _untrusted.append(source)
    try:
        yield
    finally:
        _untrusted.pop()


def _refuse_untrusted(module: str, what: str) -> UntrustedPluginError:
    if module.split(".")[0] in sys.stdlib_module_names:
        return UntrustedPluginError(
            f"{_untrusted[-1]} {what}, which is part of Python's standard library, not a "
            "pyro-vae plugin: no run written by pyro-vae names it, so this file was altered "
            "or written by someone else, and pyro-vae imports nothing a run names. Do not use "
            "this run; retrain, or restore it from a copy you trust.", [])
    return UntrustedPluginError(
        f"{_untrusted[-1]} {what}, and pyro-vae never imports code that a run directory or a "
        "checkpoint names: anyone can write those files, and importing a module runs it. If "
        f"you trust the module {module!r} (installed, or in a folder on your PYTHONPATH), give "
        f"--plugin {module} with the command (in Python: pyro_vae.registry.load_plugin"
        f"({module!r}) before loading the run); the module is then imported because you asked.",
        [module])


def load_builtins() -> None:
    """Import the library's own component modules once (they register the built-ins)."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    try:
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
    except BaseException:
        _builtins_loaded = False
        raise
    load_entry_points()


def _has_entry_points() -> bool:
    """Whether any installed package declares a ``pyro_vae.plugins`` entry point."""
    return bool(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _source_file(module: str) -> Path:
    """The source file of the library's own ``module``, found without importing it."""
    folder = Path(__file__).resolve().parent.joinpath(*module.split(".")[1:])
    return folder / "__init__.py" if folder.is_dir() else folder.with_suffix(".py")


@functools.lru_cache(maxsize=None)
def declared_builtin_names() -> dict[str, tuple[str, ...]]:
    """Registry kind -> the names that :data:`BUILTIN_MODULES` register, read from their
    source (each ``REGISTRY.register("name", ...)`` or ``REGISTRY.add("name", ...)`` call,
    the registry imported from this module under any alias) without importing them.

    Only the command line's help reads this; every lookup loads the modules themselves. The
    modules remain the one place that names the built-ins (tests/test_cli_speed.py checks
    that this reading finds exactly the names that loading them registers)."""
    registries = {name: value.kind for name, value in globals().items()
                  if isinstance(value, Registry)}
    names: dict[str, list[str]] = {kind: [] for kind in registries.values()}
    for module in BUILTIN_MODULES:
        tree = ast.parse(_source_file(module).read_text(encoding="utf-8"))
        local: dict[str, str] = {}  # name in the module -> registry kind
        calls: list[tuple[tuple[int, int], ast.Call]] = []
        for node in tree.body:  # the built-ins register at their modules' top level
            if isinstance(node, ast.ImportFrom) and node.module == __name__:
                local.update({alias.asname or alias.name: registries[alias.name]
                              for alias in node.names if alias.name in registries})
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                # Stacked decorators apply from the innermost out.
                calls += [((node.decorator_list[0].lineno, -place), decorator)
                          for place, decorator in enumerate(node.decorator_list)
                          if isinstance(decorator, ast.Call)]
            elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
                calls.append(((node.lineno, node.col_offset), node.value))
        for _, call in sorted(calls, key=lambda pair: pair[0]):
            func = call.func
            if isinstance(func, ast.Attribute) and func.attr in ("register", "add") \
                    and isinstance(func.value, ast.Name) and func.value.id in local \
                    and call.args and isinstance(call.args[0], ast.Constant) \
                    and isinstance(call.args[0].value, str):
                found = names[local[func.value.id]]
                if call.args[0].value not in found:
                    found.append(call.args[0].value)
    return {kind: tuple(found) for kind, found in names.items()}


def load_plugin(module: str, who: str = "") -> None:
    """Import the plugin ``module`` (registering its entries), or raise :class:`PluginError`
    naming the module to install. ``who`` says where the plugin was asked for.

    Inside :func:`untrusted` nothing is imported: a module not yet loaded (or imported) by this
    process raises :class:`UntrustedPluginError`."""
    load_builtins()
    if module in _loaded_plugins:
        return
    if _untrusted:
        if module in sys.modules:  # imported already: importing it again runs nothing
            return
        raise _refuse_untrusted(module, f"lists the plugin module {module!r}")
    _import_plugin(module, who)


def _import_plugin(module: str, who: str) -> None:
    """Import ``module`` as a plugin, for a trusted reason ``who``."""
    source = f" ({who})" if who else ""
    if not all(part.isidentifier() for part in module.split(".")):  # e.g. a file's path
        raise PluginError(f"the plugin {module!r}{source} is not a Python module name. "
                          + _module_hint(module))
    _importing.append(module)
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as error:
        missing = error.name or module
        raise PluginError(
            f"the plugin module {module!r}{source} cannot be imported: Python finds no module "
            f"named {missing!r}. " + _module_hint(module)) from None
    except ConfigError:
        raise
    except Exception as error:
        raise PluginError(
            f"the plugin module {module!r}{source} failed while being imported "
            f"({type(error).__name__}: {error}); fix the plugin or leave it out.") from None
    finally:
        _importing.pop()
    _loaded_plugins.append(module)


def _module_hint(module: str) -> str:
    """What to do about a plugin module Python cannot find (a file path is not a module)."""
    if module.endswith(".py") or "/" in module or "\\" in module:
        path = module.replace("\\", "/")
        folder, _, stem = path.rpartition("/")
        return (f"A plugin is named as a Python module, not as a file: put the folder that "
                f"holds {stem} on PYTHONPATH and give the module's name, e.g. PYTHONPATH="
                f"{folder or '.'} pyro-vae ... --plugin {stem.removesuffix('.py')}.")
    return ("Install the package that provides it (pip install it, or add its folder to "
            "PYTHONPATH) and run the command again.")


def import_object(path: str, who: str = "") -> Any:
    """The object that ``"package.module:attribute"`` names, or a :class:`PluginError` saying
    which module to install.

    Inside :func:`untrusted` the module must be a plugin this process has already loaded, and
    the object a function or class defined there under that name (not one the module merely
    imported, such as ``os.system``); nothing is imported."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"{who or path}: an import path is written \"package.module:name\".")
    if _untrusted and module_name not in _loaded_plugins:
        raise _refuse_untrusted(module_name, f"names {path!r} ({who or path}), code in the "
                                f"module {module_name!r}")
    load_plugin(module_name, who)
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise PluginError(f"{who or path}: module {module_name!r} has no {attribute!r}; "
                              "check the name, or install the version of the package that "
                              "defines it.")
        target = getattr(target, part)
    if _untrusted and (getattr(target, "__module__", None) != module_name
                       or getattr(target, "__qualname__", None) != attribute):
        raise ConfigError(f"{_untrusted[-1]}: {who or path} is not a factory defined in the "
                          f"plugin module {module_name!r} (it is {type(target).__name__} "
                          f"{getattr(target, '__module__', '?')}."
                          f"{getattr(target, '__qualname__', '?')}); a run may name only a "
                          "function or class that its plugin module itself defines.")
    return target


def load_plugins(modules: Iterable[str], who: str = "") -> None:
    for module in modules:
        load_plugin(module, who)


def load_entry_points() -> None:
    """Load the plugins that installed packages declare in the ``pyro_vae.plugins`` group
    (installing a package is the user's consent). One that fails to import is remembered, not
    raised, so that every command not using it still works; :meth:`Registry.entry` names it
    when a name it would register is asked for."""
    for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        module = point.value.split(":")[0]
        if module in _loaded_plugins:
            continue
        package = getattr(getattr(point, "dist", None), "name", None) or "?"
        try:
            _import_plugin(module, f"entry point {point.name!r} of the installed package "
                                   f"{package!r}")
        except PluginError as error:
            if (package, module, str(error)) not in _broken_entry_points:
                _broken_entry_points.append((package, module, str(error)))


def broken_entry_points() -> tuple[tuple[str, str, str], ...]:
    """(package, module, what failed) of installed plugins that could not be imported."""
    return tuple(_broken_entry_points)


def loaded_plugins() -> tuple[str, ...]:
    """Plugin modules loaded so far in this process (recipe, flag or entry point)."""
    return tuple(_loaded_plugins)


def plugins_providing(names: Iterable[tuple[Registry, str]]) -> list[str]:
    """The plugin modules that registered the given ``(registry, name)`` entries (those a
    run uses), in order and without repeats: loaded by a recipe, ``--plugin`` or an
    installed package's entry point alike. Names not registered are skipped."""
    modules: list[str] = []
    for registry, name in names:
        if name in registry:
            plugin = registry.entry(name).plugin
            if plugin and plugin not in modules:
                modules.append(plugin)
    return modules
