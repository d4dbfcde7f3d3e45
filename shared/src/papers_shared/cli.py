"""One command line for every package, modelled on trl's ``TrlParser``.

``<prog> <command> [--config NAME|PATH] [--out DIR] [--resume] [--no-progress] [--seed N] [--device D]
[command options] [key=value ...]``

A package declares its config dataclass and its commands as functions over a validated config; this
module supplies the rest, the same way in all ten packages:

- ``--config`` takes a shipped config name (``<prog> list-configs``; found with :mod:`importlib.resources`
  in an installed wheel, or in the source tree's ``configs/``) or a YAML path; trailing ``key=value``
  overrides reach nested fields (``train.lr=1e-3``). The config is validated when built
  (:class:`papers_shared.config.Config`), so ``show-config`` accepts exactly what a run accepts.
- common flags: ``--out`` (checked writable before any work starts), ``--resume``, ``--no-progress``
  (every tqdm bar off), ``--seed`` and ``--device`` (mapped onto the package's config keys);
- built-in commands: ``quick`` (the package's quick reproduction through the ``reproduce`` runner: same
  JSON, same report), ``show-config`` (``--help`` lists every field with its help text and rules) and
  ``list-configs``;
- one error boundary (:func:`error_boundary`): a user error (bad config, missing data or weights, damaged
  or refused checkpoint, malformed input table, unwritable output) is one line on stderr and exit 2;
  Ctrl-C is exit 130; anything else is a bug and keeps its traceback.

Example (a whole package CLI)::

    cli = CLI("mypkg", MyConfig, description=__doc__, keys={"seed": "train.seed", "out": "out_dir"})

    @cli.command("train", help="train one model", args=[arg("--init", type=Path, help="start weights")])
    def train(cfg: MyConfig, ctx: Context) -> dict:
        return run_training(cfg, init=ctx.args.init, resume=ctx.resume, progress=ctx.progress)

    main = cli.main
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.resources
import json
import os
import pickle
import sys
import tempfile
import threading
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from papers_shared.config import ConfigError, config_to_dict, describe_config, load_config
from papers_shared.errors import OutputPathError, UserError

__all__ = [
    "CLI",
    "COMMON_FLAGS",
    "Context",
    "arg",
    "check_output_dir",
    "config_dir",
    "error_boundary",
    "list_configs",
    "resolve_config",
]


def _literal(text: str) -> str:
    """``text`` shown verbatim by argparse, which %-formats help strings (``%`` -> ``%%``)."""
    return text.replace("%", "%%")


COMMON_FLAGS = ("out", "resume", "no-progress", "seed", "device")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


# ----------------------------------------------------------------------------------------------- configs
def config_dir(package: str) -> Path | None:
    """The folder of a package's shipped configs.

    In an installed wheel they are package data, ``<package>/configs``; in the source tree (an editable
    install) they are ``packages/<folder>/configs`` beside ``src/``. ``None`` if the package ships none.
    """
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        return None
    wheel = root / "configs"
    if wheel.is_dir():
        return Path(str(wheel))
    source = Path(str(root)).parent.parent / "configs"
    return source if source.is_dir() else None


def list_configs(package: str, include_bases: bool = False) -> dict[str, Path]:
    """Shipped config names (file stems) -> paths, sorted by name.

    A name starting with ``_`` is a base file that other configs include (``_base_: _base_paper.yaml``),
    not a runnable table: it is left out unless ``include_bases`` (it still resolves by name).
    """
    folder = config_dir(package)
    if folder is None:
        return {}
    paths = sorted(folder.glob("*.yaml"))
    return {p.stem: p for p in paths if include_bases or not p.stem.startswith("_")}


def resolve_config(package: str, name: str | os.PathLike | None) -> Path | None:
    """A YAML path, or a shipped config name (``esma_resnet50`` or ``esma_resnet50.yaml``) -> its path."""
    if name is None:
        return None
    path = Path(name)
    if path.is_file():
        return path
    shipped = list_configs(package, include_bases=True)
    stem = path.name.removesuffix(".yaml").removesuffix(".yml")
    if stem in shipped and len(path.parts) == 1:
        return shipped[stem]
    runnable = [n for n in shipped if not n.startswith("_")]
    raise ConfigError(
        f"config {str(name)!r} not found: neither a file nor a shipped config "
        f"(shipped: {', '.join(runnable) or 'none'})"
    )


def _describe_yaml(path: Path) -> str:
    """The first ``#`` comment line of a YAML file (its one-line description), or ''."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith("#"):
                return line.lstrip("#").strip()
            if line.strip():
                return ""
    except OSError:
        pass
    return ""


# ------------------------------------------------------------------------------------------ error boundary
def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [
        UserError,
        FileNotFoundError,  # includes DatasetNotFoundError
        PermissionError,
        IsADirectoryError,
        NotADirectoryError,
        json.JSONDecodeError,
        csv.Error,
        yaml.YAMLError,
        pickle.UnpicklingError,
    ]
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:  # pragma: no cover - safetensors is a dependency
        pass
    return tuple(errors)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, json.JSONDecodeError) and exc.doc is not None:
        text = f"malformed JSON ({text})"
    return text or type(exc).__name__


def error_boundary(prog: str, work: Callable[[], int | None], *, real_argv: bool = False) -> int:
    """Run ``work`` and turn user errors into one line + exit 2, Ctrl-C into exit 130.

    Any other exception propagates with its traceback (it is a bug). With ``real_argv`` (the console
    script, not a call from Python) an interrupted process whose worker threads are still busy exits at
    once instead of waiting for them; result files are written atomically, so none is left half-written.
    """
    try:
        code = work()
        return 0 if code is None else int(code)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        if real_argv and threading.active_count() > 1:
            sys.stdout.flush()
            os._exit(EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED
    except _user_errors() as exc:
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Make sure ``path`` is (or can become) a writable folder, before any work starts."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{flag} {path} is a file, not a folder; give a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except NotADirectoryError:
        raise OutputPathError(f"{flag} {path}: a parent of it is a file, not a folder") from None
    except OSError as exc:
        raise OutputPathError(
            f"{flag} {path} is not writable ({exc.strerror or exc}); choose another folder"
        ) from None
    return path


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (``None`` if ``path`` exists)."""
    path = path.absolute()
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def _remove_if_empty(created: Path | None, out: Path | None) -> None:
    """Undo the folders the --out check created when the command failed before writing anything."""
    if created is None or out is None:
        return
    leaf = out.absolute()
    try:
        while True:
            leaf.rmdir()  # only succeeds on an empty folder
            if leaf == created:
                return
            leaf = leaf.parent
    except OSError:
        return


# --------------------------------------------------------------------------------------------------- CLI
def arg(*flags: str, **kwargs: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    """An extra command option, as ``argparse.add_argument(*flags, **kwargs)`` takes it."""
    return flags, kwargs


@dataclasses.dataclass
class Context:
    """What a command gets besides its config: the common flags and its own options (``args``)."""

    prog: str
    command: str
    config_path: Path | None
    out: Path | None
    resume: bool
    progress: bool
    seed: int | None
    device: str | None
    args: argparse.Namespace


@dataclasses.dataclass
class _Command:
    name: str
    fn: Callable[..., Any]
    help: str
    args: tuple
    config: bool
    flags: tuple[str, ...]


def _field_type(cls: type, dotted: str) -> Any:
    tp: Any = cls
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(tp):
            return None
        tp = typing.get_type_hints(tp).get(part)
        if tp is None:
            return None
    return tp


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


class CLI:
    """A package's command line: declared commands plus ``quick``, ``show-config`` and ``list-configs``.

    ``prog`` is the console-script name (also the ``reproduce`` entry-point name); ``config_cls`` the
    package's top-level config dataclass; ``package`` the import name holding ``configs`` (default:
    ``prog`` with ``-`` -> ``_``). ``keys`` maps the common flags ``seed``, ``device`` and ``out`` onto
    dotted config keys (a list-typed seed key such as ``seeds`` receives ``[N]``); ``default_config`` is
    used when ``--config`` is not given.
    """

    def __init__(
        self,
        prog: str,
        config_cls: type | None,
        *,
        description: str = "",
        package: str | None = None,
        keys: Mapping[str, str] | None = None,
        default_config: str | None = None,
    ) -> None:
        self.prog = prog
        self.config_cls = config_cls
        self.description = description
        self.package = package or prog.replace("-", "_")
        self.keys = dict(keys or {})
        unknown = set(self.keys) - {"seed", "device", "out"}
        if unknown:
            raise ValueError(f"keys maps only seed, device and out, not {sorted(unknown)}")
        if config_cls is not None:
            for flag, key in self.keys.items():
                if _field_type(config_cls, key) is None:
                    raise ValueError(f"{flag} key {key!r} is not a field of {config_cls.__name__}")
        self.default_config = default_config
        self.commands: dict[str, _Command] = {}

    # ---------------------------------------------------------------------------------------- declaring
    def command(
        self,
        name: str,
        *,
        help: str = "",
        args: Iterable[tuple[tuple[str, ...], dict[str, Any]]] = (),
        config: bool = True,
        flags: Sequence[str] = COMMON_FLAGS,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Declare ``fn(cfg, ctx)`` (or ``fn(ctx)`` with ``config=False``) as sub-command ``name``.

        ``flags`` picks the common flags it takes; it returns an exit code, ``None`` (0), or a dict/list
        printed as JSON.
        """
        bad = set(flags) - set(COMMON_FLAGS)
        if bad:
            raise ValueError(f"unknown common flag(s) {sorted(bad)}; known: {COMMON_FLAGS}")
        if name in self.commands or name in ("quick", "show-config", "list-configs"):
            raise ValueError(f"command {name!r} is declared twice or is built in")

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.commands[name] = _Command(name, fn, help, tuple(args), config, tuple(flags))
            return fn

        return register

    # ------------------------------------------------------------------------------------------ parsing
    def _add_config_args(self, sp: argparse.ArgumentParser) -> None:
        shipped = ", ".join(list_configs(self.package)) or "none"
        default = f" (default: {self.default_config})" if self.default_config else ""
        sp.add_argument(
            "--config",
            default=self.default_config,
            help=f"a shipped config name or a YAML path{default}; shipped: {shipped}",
        )
        sp.add_argument(
            "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=1e-3"
        )

    def _add_flags(self, sp: argparse.ArgumentParser, flags: Sequence[str]) -> None:
        if "out" in flags:
            where = f" (sets {self.keys['out']})" if "out" in self.keys else ""
            sp.add_argument("--out", type=Path, default=None, help=f"output folder{where}")
        if "resume" in flags:
            sp.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
        if "no-progress" in flags:
            sp.add_argument("--no-progress", action="store_true", help="no progress bars")
        if "seed" in flags:
            where = f" (sets {self.keys['seed']})" if "seed" in self.keys else ""
            sp.add_argument("--seed", type=int, default=None, help=f"random seed{where}")
        if "device" in flags:
            where = f" (sets {self.keys['device']})" if "device" in self.keys else ""
            sp.add_argument("--device", default=None, help=f"cpu, cuda, cuda:1, auto{where}")

    def parser(self) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(
            prog=self.prog, description=self.description, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        sub = p.add_subparsers(dest="command", required=True, metavar="command")
        for c in self.commands.values():
            # argparse %-formats help strings: a literal "%" in a package's text must not break --help
            sp = sub.add_parser(c.name, help=_literal(c.help), description=c.help)
            if c.config:
                self._add_config_args(sp)
            self._add_flags(sp, c.flags)
            for flags, kwargs in c.args:
                if isinstance(kwargs.get("help"), str):
                    kwargs = {**kwargs, "help": _literal(kwargs["help"])}
                sp.add_argument(*flags, **kwargs)
        from papers_shared.reproduce import DEFAULT_OUT, DEFAULT_THREADS

        q = sub.add_parser(
            "quick",
            help=f"the quick reproduction on bundled offline data (same as `reproduce {self.prog}`)",
        )
        q.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
        q.add_argument("--full", action="store_true", help="the longer variant (more seeds/steps)")
        q.add_argument("--no-progress", action="store_true", help="no progress bars")
        q.add_argument(
            "--threads", type=int, default=DEFAULT_THREADS, help="torch threads, fixed for repeatable numbers"
        )
        if self.config_cls is not None:
            epilog = (
                "fields (key: type = default  help  [rules]):\n  "
                + "\n  ".join(describe_config(self.config_cls))
                + "\n"
            )
            s = sub.add_parser(
                "show-config",
                help="print the resolved, validated config (YAML); --help lists every field",
                epilog=epilog,
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            self._add_config_args(s)
            self._add_flags(s, [f for f in ("seed", "device", "out") if f in self.keys])
        sub.add_parser("list-configs", help="list the shipped configs (one per paper table)")
        return p

    # ------------------------------------------------------------------------------------------ running
    def load(self, config: str | os.PathLike | None, overrides: Sequence[str] = (), **flags: Any) -> Any:
        """The validated config a command would get: shipped name or path, overrides, mapped flags."""
        if self.config_cls is None:
            raise ConfigError(f"{self.prog} has no config")
        extra = []
        for flag in ("seed", "device", "out"):
            value = flags.get(flag)
            if value is None or flag not in self.keys:
                continue
            key = self.keys[flag]
            tp = _field_type(self.config_cls, key)
            if flag == "seed" and typing.get_origin(tp) in (list, tuple, Sequence):
                extra.append(f"{key}=[{int(value)}]")
            else:
                extra.append(f"{key}={value}")
        return load_config(self.config_cls, resolve_config(self.package, config), [*overrides, *extra])

    def _run(self, args: argparse.Namespace) -> int | None:
        if getattr(args, "no_progress", False):
            os.environ["TQDM_DISABLE"] = "1"
        if args.command == "list-configs":
            for name, path in list_configs(self.package).items():
                print(f"{name:<32} {_describe_yaml(path)}".rstrip())
            return 0
        if args.command == "quick":
            from papers_shared.reproduce import run_packages

            check_output_dir(args.out)
            return run_packages([self.prog], args.out, full=args.full, threads=args.threads, catch=False)
        flags = {k: getattr(args, k, None) for k in ("seed", "device", "out")}
        if args.command == "show-config":
            cfg = self.load(args.config, args.overrides, **flags)
            print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
            return 0
        cmd = self.commands[args.command]
        cfg = self.load(args.config, args.overrides, **flags) if cmd.config else None
        out = getattr(args, "out", None)
        if out is None and cfg is not None and "out" in self.keys:
            out = Path(_get(cfg, self.keys["out"]))
        created = None
        if out is not None and "out" in cmd.flags:
            created = _first_missing(Path(out))
            check_output_dir(out)
        ctx = Context(
            prog=self.prog,
            command=cmd.name,
            config_path=resolve_config(self.package, args.config) if cmd.config else None,
            out=out,
            resume=bool(getattr(args, "resume", False)),
            progress=not getattr(args, "no_progress", False),
            seed=getattr(args, "seed", None),
            device=getattr(args, "device", None),
            args=args,
        )
        try:
            result = cmd.fn(cfg, ctx) if cmd.config else cmd.fn(ctx)
        except BaseException:
            _remove_if_empty(created, Path(out) if out is not None else None)
            raise
        if isinstance(result, (dict, list)):
            from papers_shared.results import to_jsonable

            print(json.dumps(to_jsonable(result), indent=2))
            return 0
        return result

    def main(self, argv: Sequence[str] | None = None) -> int:
        """Parse ``argv`` (default: the command line), run the command inside :func:`error_boundary`."""
        args = self.parser().parse_args(None if argv is None else list(argv))
        return error_boundary(f"{self.prog} {args.command}", lambda: self._run(args), real_argv=argv is None)
