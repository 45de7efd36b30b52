"""Configuration files for any argparse parser: `--config FILE` and `--print-config`.

    skd-train --config runs/teacher.yaml --lr-g 0.02      # the file, then the command line
    skd-train --config runs/teacher.yaml --print-config   # show what would run, run nothing

A file is a mapping of flag names to values, in JSON (always) or YAML (`.yaml` / `.yml`, with
PyYAML: `pip install 'skd[config]'`)::

    data_dir: data/cityscapes       # keys: flag names without dashes, lambda_pi or lambda-pi
    input_size: [512, 1024]         # a list for a one-value flag is joined with commas: 512,1024
    scales: [0.75, 1.0, 1.25]       # a list for an nargs flag gives its values
    pi: true
    lambda_pi: 10
    teacher_ckpt: null              # null: only for flags whose default is None

Each value goes through the parser's own `type=` and `choices`, as if it had been typed on the
command line (`str(value)`), so a file can hold nothing the command line would refuse: a bad
value is an SkdError naming the key and the file, and so is a key that is no flag (nanoGPT's
configurator refuses unknown keys too). Flags given on the command line override the file.
YAML is read with booleans limited to true/false (YAML 1.2), so `amp: off` stays the string
"off". `dump_config` writes the resolved flags in a form `--config` reads back to the same
namespace.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from skd.errors import SkdError

# Namespace entries of the config machinery itself: never read from or written to a file.
CONFIG_DESTS = ("config", "print_config")
YAML_SUFFIXES = (".yaml", ".yml")


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """Add `--config FILE` and `--print-config` to `parser` (read by parse_with_config); a parser
    that has them already (skd-train's) is left as it is."""
    if "--config" in parser._option_string_actions:
        return
    g = parser.add_argument_group("configuration file")
    g.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="YAML or JSON file of flag values (keys: flag names without dashes); "
                        "flags on the command line override it")
    g.add_argument("--print-config", action="store_true",
                   help="print the resolved configuration (file and command line) and exit")


def _yaml():
    try:
        import yaml
    except ImportError:
        return None
    return yaml


def _yaml_loader(yaml):
    """SafeLoader whose booleans are only true/false (any case), not YAML 1.1's yes/no/on/off."""
    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))
    return Loader


def _needs_yaml(path: Path) -> Any:
    yaml = _yaml()
    if yaml is None:
        raise SkdError(f"{path}: YAML needs the PyYAML package: pip install 'skd[config]', or use a .json file")
    return yaml


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping in a JSON or YAML file (by suffix). SkdError naming the file when it cannot
    be read, does not parse, or is not a mapping."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SkdError(f"--config {path}: cannot read it ({e.strerror})") from None
    if path.suffix.lower() in YAML_SUFFIXES:
        yaml = _needs_yaml(path)
        try:
            data = yaml.load(text, Loader=_yaml_loader(yaml))
        except yaml.YAMLError as e:
            raise SkdError(f"--config {path}: not valid YAML ({' '.join(str(e).split())})") from None
    elif path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SkdError(f"--config {path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    else:
        raise SkdError(f"--config {path}: unknown suffix {path.suffix!r}; use .yaml, .yml or .json")
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise SkdError(f"--config {path}: holds a {type(data).__name__}; expected a mapping of flag names to values")
    return dict(data)


def _flag_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every key a file may use -> its action: each long option without its dashes, in both
    the dash and the underscore spelling (`lambda-pi`, `lambda_pi`), and the dest."""
    keys: dict[str, argparse.Action] = {}
    for action in parser._actions:  # argparse offers no public list of a parser's actions
        if action.dest in CONFIG_DESTS or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        if not action.option_strings:
            continue
        names = {action.dest}
        for opt in action.option_strings:
            if opt.startswith("--"):
                names |= {opt[2:], opt[2:].replace("-", "_")}
        for name in names:
            keys[name] = action
    return keys


def _flag_name(action: argparse.Action) -> str:
    return max(action.option_strings, key=len)


def _convert_one(action: argparse.Action, value: Any, key: str, path: Path, shown: Any = None) -> Any:
    """One file value through the action's type and choices, as argparse treats a string;
    errors quote `shown` (the value as the file wrote it) when given."""
    if isinstance(value, (Mapping, list, tuple)):
        raise SkdError(f"{path}: key {key!r}: {value!r} is not a single value for {_flag_name(action)}")
    text = value if isinstance(value, str) else str(value)
    value = value if shown is None else shown
    try:
        converted = action.type(text) if action.type is not None else text
    except (argparse.ArgumentTypeError, TypeError, ValueError) as e:
        kind = getattr(action.type, "__name__", "value")
        why = str(e) if isinstance(e, argparse.ArgumentTypeError) else f"expected {kind}"
        raise SkdError(f"{path}: key {key!r}: invalid value {value!r} for {_flag_name(action)} ({why})") from None
    if action.choices is not None and converted not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise SkdError(f"{path}: key {key!r}: {value!r} is not one of {choices} ({_flag_name(action)})")
    return converted


def convert_value(action: argparse.Action, value: Any, key: str, path: Path) -> Any:
    """A file value -> what parsing the command line would have stored for `action`."""
    if value is None:
        if action.default is not None:
            raise SkdError(f"{path}: key {key!r}: null, but {_flag_name(action)} needs a value "
                           f"(default {action.default!r}); give one or drop the key")
        return None
    if action.nargs == 0:  # store_true / store_false / store_const
        if not isinstance(value, bool):
            raise SkdError(f"{path}: key {key!r}: {value!r} for {_flag_name(action)}; expected true or false")
        return action.const if value else action.default
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if action.nargs == "+" and not values and action.default == []:
            return []  # the flag's own default (e.g. --eval-at: none), as a dump writes it
        if action.nargs == "+" and not values:
            raise SkdError(f"{path}: key {key!r}: {_flag_name(action)} needs at least one value")
        if isinstance(action.nargs, int) and len(values) != action.nargs:
            raise SkdError(f"{path}: key {key!r}: {_flag_name(action)} takes {action.nargs} values, "
                           f"got {len(values)}")
        return [_convert_one(action, v, key, path) for v in values]
    if isinstance(value, (list, tuple)) and not any(isinstance(v, (Mapping, list, tuple)) for v in value):
        # one value made of parts, e.g. size_pair's H,W
        return _convert_one(action, ",".join(str(v) for v in value), key, path, shown=value)
    return _convert_one(action, value, key, path)


def config_values(parser: argparse.ArgumentParser, data: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """{dest: converted value} of a file's mapping; SkdError on an unknown or repeated key or a
    bad value, naming the key and the file."""
    actions = _flag_actions(parser)
    values: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for key, value in data.items():
        if not isinstance(key, str) or key not in actions:
            if key in CONFIG_DESTS or key in ("print-config",):
                raise SkdError(f"{path}: key {key!r} belongs on the command line, not in a configuration file")
            raise SkdError(f"{path}: key {key!r} is not a flag of {parser.prog}; "
                           f"see {parser.prog} --help for the flags (keys: their names without dashes)")
        action = actions[key]
        if action.dest in seen:
            raise SkdError(f"{path}: keys {seen[action.dest]!r} and {key!r} both set {_flag_name(action)}")
        seen[action.dest] = key
        values[action.dest] = convert_value(action, value, key, path)
    return values


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None, *,
                      exit_on_print: bool = True) -> argparse.Namespace:
    """`parser.parse_args(argv)` with the values of `--config FILE` under the command line's.

    The parser must have had add_config_args. File values stand in for the defaults, so a flag
    the file sets is no longer required on the command line, and a flag on the command line
    wins. With --print-config and `exit_on_print`, prints config_text(...) to stdout and exits
    with status 0; with `exit_on_print=False` the caller does so (args.print_config is True),
    e.g. after filling in derived defaults.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path, default=None)
    known, _ = pre.parse_known_args(argv)
    namespace = argparse.Namespace()
    if known.config is not None and not {"-h", "--help"} & set(argv):
        values = config_values(parser, read_config_file(known.config), known.config)
        for dest, value in values.items():
            setattr(namespace, dest, value)
        # argparse keeps attributes already on the namespace instead of the defaults, but still
        # insists that a required flag appear in argv: the file counts as having given it.
        relaxed = [a for a in parser._actions if a.required and a.dest in values]
        for action in relaxed:
            action.required = False
        try:
            args = parser.parse_args(argv, namespace)
        finally:
            for action in relaxed:
                action.required = True
    else:
        args = parser.parse_args(argv, namespace)
    if exit_on_print and getattr(args, "print_config", False):
        print(config_text(args, parser), end="")
        parser.exit(0)
    return args


def config_dict(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> dict[str, Any]:
    """The flags of `args` as plain JSON/YAML values: paths as strings, tuples as lists.

    With `parser`, only its flags' dests (so attributes a program adds after parsing stay
    out); the config machinery's own entries (config, print_config) never appear.
    """
    keys = [k for k in vars(args) if k not in CONFIG_DESTS]
    if parser is not None:
        dests = {a.dest for a in _flag_actions(parser).values()}
        keys = [k for k in keys if k in dests]
    return {k: _plain(getattr(args, k)) for k in keys}


def _plain(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_text(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None, fmt: str | None = None) -> str:
    """The resolved configuration as text: YAML when PyYAML is installed (or fmt="yaml"),
    else JSON (fmt="json")."""
    data = config_dict(args, parser)
    fmt = fmt or ("yaml" if _yaml() is not None else "json")
    if fmt == "yaml":
        yaml = _needs_yaml(Path("<yaml>"))
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
    return json.dumps(data, indent=2) + "\n"


def dump_config(args: argparse.Namespace, path: str | os.PathLike,
                parser: argparse.ArgumentParser | None = None) -> Path:
    """Write the resolved flags to `path` (YAML for .yaml/.yml, which needs PyYAML, else JSON),
    in a form that `--config path` reads back to the same namespace. Returns the path."""
    path = Path(path)
    fmt = "yaml" if path.suffix.lower() in YAML_SUFFIXES else "json"
    if fmt == "yaml":
        _needs_yaml(path)
    text = config_text(args, parser, fmt)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        raise SkdError(f"could not write {path}: {e.strerror}") from None
    return path
