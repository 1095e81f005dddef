"""Options of the `lamo` app itself (before the command)."""

import torch
from typer.testing import CliRunner

import lamo_cli
from lamo_cli.cli import app


def test_version_names_lamo_and_torch():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert f"lamo {lamo_cli.__version__}" in result.output and f"torch {torch.__version__}" in result.output


def test_threads_sets_torchs_thread_count():
    before = torch.get_num_threads()
    try:
        result = CliRunner().invoke(app, ["--threads", "1", "world", "--help"])
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_negative_threads_is_refused_with_the_option_named():
    result = CliRunner().invoke(app, ["--threads", "-2", "world", "--help"])
    assert result.exit_code != 0 and "--threads" in result.output
