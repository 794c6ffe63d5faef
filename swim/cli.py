"""The command line around ``train.py`` and ``evaluate.py``'s Hydra apps: ``--help`` and did-you-mean.

- ``--help`` / ``-h`` prints the entry config's header comment (``conf/train.yaml``: what to set
  for a real run), then only the config groups that entry config selects, with their options and
  defaults; Hydra's own help stays at ``--hydra-help``. Both scripts share ``conf/``, so Hydra's
  help would list train's groups under evaluate and eval's under train.
- When Hydra rejects the command line, a line follows its error: ``did you mean ...?`` for a
  misspelled key or group option, or how to quote a value with ``<``, ``>`` or spaces.

Free of heavy imports: ``--help`` is instant.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"
HELP_FLAGS = ("--help", "-h")
# Flags of Hydra's command line that take a value (the value is not an override).
FLAGS_WITH_VALUE = ("--cfg", "-c", "--package", "-p", "--info", "-i", "--config-path", "-cp", "--config-name")
# Characters that Hydra's override grammar only accepts inside quotes.
NEEDS_QUOTES = set("<>()[]{}'\"\\ ,:")
MISSING = object()
# An example override of each entry config, for the help text.
EXAMPLE_KEY = {"train": "trainer.max_steps=50", "eval": "generation.batch_size=8"}


def config_header(config_name: str) -> str:
    """The leading comment block of ``conf/<config_name>.yaml``, without the ``#`` marks."""
    lines = []
    for line in (CONF / f"{config_name}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[2:] if line.startswith("# ") else line[1:])
    return "\n".join(lines)


def config_groups(config_name: str) -> dict[str, str | None]:
    """Group -> default option of the entry config's defaults list (``_self_`` and ``hydra`` left out)."""
    defaults = yaml.safe_load((CONF / f"{config_name}.yaml").read_text()).get("defaults", [])
    groups: dict[str, str | None] = {}
    for entry in defaults:
        if isinstance(entry, dict):
            ((group, option),) = entry.items()
            if group != "hydra":
                groups[group] = option
    return groups


def group_options(group: str) -> list[str]:
    """The options of a config group: the YAML files of ``conf/<group>/``."""
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


def app_help(script: str, config_name: str) -> str:
    """The text of ``<script> --help`` (module docs)."""
    lines = [
        config_header(config_name),
        "",
        f"Config groups of {script} (choose with group=option; * default):",
    ]
    for group, default in config_groups(config_name).items():
        options = ", ".join(f"{name}*" if name == default else name for name in group_options(group))
        lines.append(f"  {group}: {options}" + ("  (default: none)" if default is None else ""))
    lines += [
        "",
        f"Any config value: {script} key=value (nested keys with dots, e.g. {EXAMPLE_KEY[config_name]}).",
        "Quote a value with spaces or <ins> tags as a whole: 'input.prompt=\"Describe the <ins>dog</ins>.\"'",
        f"  {script} --cfg job        the composed config",
        f"  {script} -m a=1,2         a multirun (sweep)",
        f"  {script} --hydra-help     Hydra's own flags",
    ]
    return "\n".join(lines)


def override_arguments(argv: Sequence[str]) -> list[str]:
    """The ``key=value`` arguments of a Hydra command line (flags and their values left out)."""
    overrides, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in FLAGS_WITH_VALUE:
            skip = True
        elif not arg.startswith("-") and "=" in arg:
            overrides.append(arg)
    return overrides


def _keys(node: Any, prefix: str = "") -> Iterator[str]:
    """Every dotted key of a config's mappings (lists are not entered)."""
    if isinstance(node, DictConfig):
        for key in node:
            dotted = f"{prefix}{key}"
            yield dotted
            yield from _keys(node._get_node(key), f"{dotted}.")


def compose_config(config_name: str, overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose(config_name, overrides=overrides)


def suggestions(argv: Sequence[str], config_name: str) -> list[str]:
    """Hints for the overrides of ``argv`` that Hydra cannot apply (module docs); ``[]`` if none."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed = []
    for arg in override_arguments(argv):
        try:
            parsed.append(parser.parse_override(arg))
        except HydraException:
            value = arg.split("=", 1)[1]
            if NEEDS_QUOTES & set(value):
                key = arg.split("=", 1)[0]
                return [
                    f"{arg!r}: a value with spaces or any of < > ( ) [ ] , : must be quoted for Hydra; "
                    f"quote it inside shell quotes: '{key}=\"{value}\"'"
                ]
            return []
    hints: list[str] = []
    selections = []
    for override in parsed:
        key = override.key_or_group
        if key.startswith("hydra") or override.is_delete() or override.is_add():
            continue
        if (CONF / key).is_dir():
            value = override.value()
            options = group_options(key)
            if isinstance(value, str) and value not in options and value != "null":
                close = difflib.get_close_matches(value, options, n=1, cutoff=0.5)
                guess = f"did you mean {key}={close[0]}? " if close else ""
                hints.append(f"{key}={value}: no such option; {guess}(options: {', '.join(options)})")
            else:
                selections.append(override.input_line)
    if hints:
        return hints
    try:
        cfg = compose_config(config_name, selections)
    except HydraException:
        return []
    known = list(_keys(cfg))
    for override in parsed:
        key = override.key_or_group
        if key.startswith("hydra") or override.is_add() or (CONF / key).is_dir():
            continue
        found = OmegaConf.select(cfg, key, default=MISSING, throw_on_resolution_failure=False)
        if found is MISSING and not _inside_list(cfg, key):
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            guess = f"did you mean {close[0]}?" if close else "no similar key; see --cfg job for every key"
            hints.append(f"{key} is not a config key: {guess} (+{key}=... adds a new key)")
    return hints


def _inside_list(cfg: DictConfig, key: str) -> bool:
    """Whether ``key`` goes through a list (indices are not checked here)."""
    node: Any = cfg
    for part in key.split("."):
        if isinstance(node, ListConfig):
            return True
        if not isinstance(node, DictConfig) or part not in node:
            return False
        node = node._get_node(part)
    return False


def run(hydra_main: Callable[[], Any], script: str, config_name: str) -> None:
    """Run a ``@hydra.main`` function with our ``--help`` and did-you-mean hints (module docs)."""
    argv = sys.argv[1:]
    if any(arg in HELP_FLAGS for arg in argv):
        print(app_help(script, config_name))
        return
    try:
        hydra_main()
    except SystemExit as stop:
        if stop.code == 1:
            for hint in suggestions(argv, config_name):
                print(hint, file=sys.stderr)
        raise
