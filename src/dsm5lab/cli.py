"""The `dsm5lab` command line: parse, load params, call one function, map errors to exit codes.

Heavy libraries are imported inside the commands so that `dsm5lab --help` is instant.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Callable

import typer

app = typer.Typer(
    name="dsm5lab",
    help="Reproducible DSM-5 criteria matching and evidence extraction on ReDSM5.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOpt = Annotated[Path, typer.Option("--params", help="params file to read.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", metavar="KEY=VALUE", help="override a param (repeatable), as `dvc exp run -S`."),
]


def user_errors(fn: Callable) -> Callable:
    """Turn a UserError into one line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from dsm5lab.errors import UserError

        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            for line in str(exc).splitlines():
                typer.echo(f"error: {line}", err=True)
            raise typer.Exit(code=exc.exit_code) from None

    return wrapper


def _load(params: Path, overrides: list[str] | None):
    from dsm5lab.config import load_params

    return load_params(params, overrides or [])


def _print_table(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    from rich.console import Console
    from rich.table import Table

    typer.echo(title)
    table = Table()
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    Console(file=sys.stdout, width=100).print(table)


@app.command()
@user_errors
def prepare(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="validate and summarise; write nothing.")] = False,
) -> None:
    """Load the data source, align, segment and split it into stages/prepare/."""
    from dsm5lab.data import prepare as stage

    cfg = _load(params, set_)
    prep = stage.run(cfg, Path("."), dry_run=dry_run)
    title = f"prepare ({prep.manifest['origin']})" + (" [dry run: nothing written]" if dry_run else "")
    _print_table(title, ("", "total", *stage.SPLITS), stage.summary_rows(prep))
    a = prep.metrics["alignment"]
    typer.echo(
        f"alignment: exact {a['exact']}, normalized {a['normalized']}, fuzzy {a['fuzzy']}, "
        f"unaligned {a['unaligned']}; rejected rows: "
        + ", ".join(f"{k} {v}" for k, v in prep.metrics["rejected"].items())
    )


@app.command()
@user_errors
def synth(
    out: Annotated[Path, typer.Option("--out", help="folder to write the two ReDSM5 CSV files into.")],
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Write the synthetic ReDSM5-format bundle (data.synthetic.*) as CSV files, for inspection."""
    from dsm5lab.data.synthetic import write_bundle

    cfg = _load(params, set_)
    paths = write_bundle(cfg.data.synthetic, out)
    typer.echo("wrote " + ", ".join(str(p) for p in paths))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
