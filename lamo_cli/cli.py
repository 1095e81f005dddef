"""The `lamo` command: a thin Typer app. Each command lives in lamo_cli/commands/<stage>.py,
parses options and calls the matching library function in lamo_cli/stages/."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="lamo",
    help="LaMo: self-supervised latent motion priors for CogVideoX-class video diffusion models.\n\n"
    "Stages chain file artifacts: encode -> fit-prior -> finetune -> generate -> heatmap.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# (command name, module in lamo_cli.commands): each module's `command` is one subcommand.
_COMMANDS = [
    ("encode", "encode"),
    ("fit-prior", "fit_prior"),
    ("finetune", "finetune"),
    ("generate", "generate"),
    ("heatmap", "heatmap"),
    ("world", "world"),
    ("eval", "evaluate"),
    ("demo", "demo"),
    ("sweep", "sweep"),
    ("build-tiny", "build_tiny"),
]


def _version(value: bool) -> None:
    if value:
        from lamo_cli.versions import library_versions

        typer.echo(" ".join(f"{name} {version}" for name, version in library_versions().items()))
        raise typer.Exit()


@app.callback()
def _options(
    threads: int = typer.Option(0, "--threads", min=0, envvar="LAMO_THREADS",
                                help="CPU threads torch may use (0 = torch's default, all cores). Before the command: lamo --threads 2 demo."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print lamo's and its libraries' versions."),
) -> None:
    """LaMo: self-supervised latent motion priors for CogVideoX-class video diffusion models."""
    if threads:
        import torch

        torch.set_num_threads(threads)


for _name, _module in _COMMANDS:
    _mod = importlib.import_module(f"lamo_cli.commands.{_module}")
    app.command(_name, help=_mod.command.__doc__)(_mod.command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
