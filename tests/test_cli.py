"""Options of the `lamo` app itself (before the command)."""

import pytest
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


def test_a_bad_device_is_one_line_in_the_stage_commands(tmp_path):
    """--device is checked where each stage resolves it: a name torch does not know, and CUDA where none is visible."""
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA to ask for a missing one")
    for args in (["fit-prior", str(tmp_path / "cache"), "--out", str(tmp_path / "prior")],
                 ["generate", "a red ball drops", "--out", str(tmp_path / "gen"), "--backbone", "tiny-random"]):
        for device, says in (("cudaX", "not a device"), ("cuda", "no CUDA device")):
            result = CliRunner().invoke(app, [*args, "--device", device])
            assert result.exit_code != 0 and says in result.output and "Traceback" not in result.output, (args, result.output)
