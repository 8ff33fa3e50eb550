"""Every CLI's --help names the command as it is run, and documents the command and its options."""

import argparse
import importlib
import os
import subprocess
import sys

import pytest

# command name -> the module whose build_parser() is its parser
CLIS = {
    "train": "jaxrl_impala.train.__main__",
    "actor": "jaxrl_impala.actor.__main__",
    "evaluate": "jaxrl_impala.evaluate",
    "plot": "jaxrl_impala.plot",
}


def _squeeze(text: str) -> str:
    """Text without whitespace: --help wraps lines anywhere, hyphens included."""
    return "".join(text.split())


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    return action.help % dict(vars(action), prog=parser.prog)


@pytest.mark.parametrize("name", CLIS)
def test_help(name):
    parser = importlib.import_module(CLIS[name]).build_parser()
    proc = subprocess.run(
        [sys.executable, "-m", f"jaxrl_impala.{name}", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, COLUMNS="80"),
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith(f"usage: python -m jaxrl_impala.{name} "), out
    assert parser.prog == f"python -m jaxrl_impala.{name}"
    # the whole description, a sentence or more, is printed
    assert parser.description and parser.description.rstrip().endswith(".")
    assert _squeeze(parser.description) in _squeeze(out)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        what = f"{name} {action.option_strings or action.dest}"
        assert action.help and action.help != argparse.SUPPRESS, f"{what}: no help"
        text = _help(parser, action)
        assert _squeeze(text) in _squeeze(out), what
        if action.option_strings:
            assert "(default:" in text or "(required)" in text, f"{what}: no default: {text}"
