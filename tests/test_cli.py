"""The command line a newcomer meets: every documented command parses as pasted, ``--help`` shows the
entry config's own groups, a misspelled override gets a did-you-mean line, and missing data fails
before anything is built, in one message."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from train_fixtures import FAST, REPO, demo_overrides, run_train_py

from swim.cli import app_help, compose_config, override_arguments, suggestions
from swim.train.preflight import ConfigError, check_eval_config

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
ENTRY_CONFIGS = [REPO / "conf" / "train.yaml", REPO / "conf" / "eval.yaml"]
SCRIPTS = {"train.py": "train", "evaluate.py": "eval"}
SHELL_BLOCK = re.compile(r"```(?:bash|sh|shell|console)\n(.*?)```", re.DOTALL)


def logical_lines(text: str) -> list[str]:
    """Shell command lines of a script, as bash reads them: a backslash-newline is removed, a newline
    inside quotes kept."""
    lines, pending, joiner = [], "", "\n"
    for line in text.splitlines():
        pending = f"{pending}{joiner}{line}" if pending else line
        joiner = "\n"
        if pending.endswith("\\"):
            pending, joiner = pending[:-1], ""
            continue
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on on the next line
            continue
        lines.append(pending)
        pending = ""
    assert not pending, f"unterminated quote in:\n{pending}"
    return lines


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(where, config name, argv after the script) of every train.py / evaluate.py command in the docs.

    ``make ... ARGS="..."`` counts as ``train.py`` with ARGS split again, as make's recipe does.
    """
    found = []
    sources = [(path, block) for path in DOCS for block in SHELL_BLOCK.findall(path.read_text())]
    # The usage lines in the entry configs' header comments (shown by --help).
    for path in ENTRY_CONFIGS:
        header = [line.lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("#")]
        sources.append((path, "\n".join(line for line in header if line.startswith("python "))))
    for path, block in sources:
        for line in logical_lines(block):
            tokens = shlex.split(line, comments=True)
            where = f"{path.name}: {line.strip()[:80]}"
            for i, token in enumerate(tokens):
                if Path(token).name in SCRIPTS:
                    found.append((where, SCRIPTS[Path(token).name], tokens[i + 1 :]))
                    break
                if token.startswith("ARGS=") and tokens[0] == "make":
                    found.append((where, "train", shlex.split(token.removeprefix("ARGS="))))
    return found


COMMANDS = documented_commands()


def test_the_docs_have_commands_to_check():
    assert len(COMMANDS) >= 20
    assert any("input.prompt" in " ".join(argv) for _, _, argv in COMMANDS)


@pytest.mark.parametrize(("where", "config_name", "argv"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_documented_command_parses_and_names_existing_keys(where: str, config_name: str, argv: list[str]):
    overrides = override_arguments(argv)
    OverridesParser.create().parse_overrides(overrides)
    assert suggestions(argv, config_name) == [], where


def test_the_predict_prompt_reaches_hydra_whole():
    (override,) = OverridesParser.create().parse_overrides(
        shlex.split("""'input.prompt="Describe the <ins>red circle</ins>."'""")
    )
    assert override.value() == "Describe the <ins>red circle</ins>."


def test_misspelled_overrides_get_a_did_you_mean_line():
    (hint,) = suggestions(["trainer.max_step=3"], "train")
    assert hint.startswith("trainer.max_step is not a config key: did you mean trainer.max_steps?")
    (hint,) = suggestions(["model=qwen2_5_7b"], "train")
    assert "did you mean model=qwen2_5_vl_7b?" in hint
    (hint,) = suggestions(["model=qwen3vl_8b"], "train")
    assert "did you mean model=qwen3_vl_8b?" in hint
    (hint,) = suggestions(shlex.split('input.prompt="Describe the <ins>dog</ins>."'), "eval")
    assert """'input.prompt="Describe the <ins>dog</ins>."'""" in hint
    assert suggestions(["loss.mask_weight=0", "+extra=1", "experiment=swim_7b"], "train") == []


def test_help_shows_the_entry_config_header_and_only_its_groups():
    done = subprocess.run(
        [sys.executable, "train.py", "--help"], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout == app_help("train.py", "train") + "\n"
    assert "python train.py experiment=swim_7b" in done.stdout
    groups = {line.split(":")[0].strip() for line in done.stdout.splitlines() if line.startswith("  ")}
    assert {"data", "model", "loss", "strategy", "logger", "experiment"} <= groups
    assert "task" not in groups
    eval_help = app_help("evaluate.py", "eval")
    eval_groups = {line.split(":")[0].strip() for line in eval_help.splitlines() if line.startswith("  ")}
    assert "task" in eval_groups and not {"loss", "strategy", "logger", "callbacks"} & eval_groups


def test_missing_data_and_weights_fail_before_anything_is_built(
    train_demo: Path, records_cache: Path, tmp_path: Path
):
    run_dir = tmp_path / "run"
    missing = tmp_path / "nowhere"
    args = [
        *FAST,
        *demo_overrides(train_demo, records_cache),
        f"data.train.sources.nl_refer_d.path={missing / 'a.json'}",
        f"data.val.sources.val_nl_refer_d.video_root={missing / 'videos'}",
        f"data.bench.sources.bench_d_nlrefer.path={missing / 'b.json'}",
        "model=qwen2_5_vl_7b",
        f"hydra.run.dir={run_dir}",
    ]
    done = run_train_py(args, env={"SWIM_QWEN_7B": ""}, check=False)
    assert done.returncode == 2
    output = done.stdout + done.stderr
    for name in ("a.json", "videos", "b.json"):
        assert output.count(str(missing / name)) == 1, output[-3000:]
    assert "$SWIM_QWEN_7B" in output and "4 problem(s)" in output
    assert "Traceback" not in output
    # Lightning's lines reach the console once (through Hydra's handler), not twice.
    assert output.count("Seed set to 42") == 1
    # Nothing was built: no W&B run, no checkpoints; the start is recorded.
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "train.log"]
    assert "overrides_history.yaml" in {p.name for p in (run_dir / ".hydra").iterdir()}


def test_evaluate_checks_sources_checkpoint_and_video_first(tmp_path: Path):
    missing = tmp_path / "nowhere"
    cfg = compose_config(
        "eval",
        [
            "task=predict",
            f"ckpt={missing / 'last.ckpt'}",
            f"input.video={missing / 'clip.mp4'}",
            f"+task.sources=[{{name: q, path: {missing / 'q.json'}, video_root: {missing}}}]",
        ],
    )
    with pytest.raises(ConfigError) as error:
        check_eval_config(cfg)
    message = str(error.value)
    assert "4 problem(s)" in message
    for name in ("last.ckpt", "clip.mp4", "q.json"):
        assert str(missing / name) in message
    # The demo benchmark is generated on first use: its sources are not reported missing.
    check_eval_config(compose_config("eval", ["task=grounding", f"paths.cache_dir={tmp_path / 'cache'}"]))
