"""The `dsm5lab` command line: parse, load params, call one function, map errors to exit codes.

Heavy libraries are imported inside the commands so that `dsm5lab --help` is instant.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Callable

import typer
from typer.core import TyperOption

from dsm5lab.layout import HPO_BEST, RETAINED

_option_type = TyperOption.display_type_rich


def _flag_type(self: TyperOption, ctx) -> str | None:
    """A flag takes no value, so its help row shows none (typer 0.29 shows a `<bool>` placeholder)."""
    return None if self.is_flag else _option_type(self, ctx)


TyperOption.display_type_rich = _flag_type

app = typer.Typer(
    name="dsm5lab",
    help="Reproducible DSM-5 criteria matching and evidence extraction on ReDSM5.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"dsm5lab {version('dsm5lab')}")
        raise typer.Exit()


@app.callback()
def main(
    show_version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, metavar="",
                                               help="print the installed version and exit.")] = False,
) -> None:
    """Reproducible DSM-5 criteria matching and evidence extraction on ReDSM5."""


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


def _with_study(cfg):
    """cfg with the study's best trial applied when hpo.enabled (hpo/best.py), saying so on stderr."""
    from dsm5lab.hpo import best

    cfg, lines = best.apply(cfg, Path("."))
    for line in lines:
        typer.echo(line, err=True)
    return cfg


def _load_pinned(params: Path, overrides: list[str] | None):
    """Params of a command that computes with torch, with CPU dispatch pinned (numerics.cpu_isa) before it does."""
    from dsm5lab.numerics import pin

    cfg = _load(params, overrides)
    pin(cfg.numerics.cpu_isa)
    return cfg


def _print_table(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]], width: int = 100,
                 justify: str = "right") -> None:
    from rich.console import Console
    from rich.table import Table

    typer.echo(title)
    table = Table()
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else justify)
    for row in rows:
        table.add_row(*row)
    Console(file=sys.stdout, width=width).print(table)


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
        f"sentence_index {a['sentence_index']}, unaligned {a['unaligned']}; rejected rows: "
        + ", ".join(f"{k} {v}" for k, v in prep.metrics["rejected"].items())
    )
    seg = prep.metrics["segmentation"]
    cross, aligned = seg["spans_crossing_natural_boundaries"], seg["aligned_spans"]
    typer.echo(f"segmentation: val and test natural (as predict), train cut around the spans; "
               f"{cross['total']} of {aligned['total']} aligned spans cross a natural sentence boundary "
               f"(val {cross['val']} of {aligned['val']}, test {cross['test']} of {aligned['test']})")
    typer.echo(f"windows: {stage.windows_line(prep.metrics['windows'])}")
    for line in prep.metrics["warnings"]:
        typer.echo(f"warning: prepare: {line}", err=True)


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


@app.command()
@user_errors
def train(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue from the last checkpoint of the run.")] = False,
) -> None:
    """Train the model params.yaml describes on stages/prepare; write stages/train/model and metrics/train.json."""
    from dsm5lab.models.catalog import pretrained_lr_warning
    from dsm5lab.training import stage

    cfg = _with_study(_load_pinned(params, set_))
    if warning := pretrained_lr_warning(cfg):
        typer.echo(warning, err=True)
    result, report = stage.run(cfg, Path("."), resume=resume)
    val = report["val"]
    typer.echo(
        "best validation (step {}, epoch {}): ".format(report["best_step"], report["best_epoch"])
        + ", ".join(f"{k} {v:.4f}" for k, v in val.items())
        + (f"; chance macro_f1 {report['val_chance_macro_f1']:.4f}" if "val_chance_macro_f1" in report else "")
    )
    tp = result.throughput
    typer.echo(f"throughput: {tp['samples_per_s']:.1f} samples/s, {tp['tokens_per_s']:.0f} tokens/s")
    for line in stage.warnings(report):
        typer.echo(f"warning: train: {line}", err=True)


@app.command()
@user_errors
def evaluate(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    model: Annotated[Path | None, typer.Option("--model", help="a model or checkpoint dir (default: the trained model).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="with --model or --ensemble: folder for its reports.")] = None,
    ensemble: Annotated[Path | None, typer.Option("--ensemble", help="a tracked set (e.g. stages/retention): its "
                                                  "ranked checkpoints averaged, against the best alone.")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="with --ensemble: the best K members "
                                              "(default: every ranked one).")] = None,
) -> None:
    """Evaluate on the test split (thresholds tuned on val): report, plots, errors, metrics/evaluate.json."""
    from dsm5lab.errors import UserError
    from dsm5lab.evaluation import stage

    if model is not None and ensemble is not None:
        raise UserError("give --model or --ensemble, not both")
    if top_k is not None and ensemble is None:
        raise UserError("--top-k needs --ensemble")
    cfg = _load_pinned(params, set_)
    if ensemble is not None:
        from dsm5lab.evaluation import ensemble as ens

        result = ens.run(cfg, Path("."), ensemble, out if out is not None else Path("reports/ensemble"), top_k)
        typer.echo(ens.summary_markdown(result))
        return
    if model is not None and out is None:
        out = Path("reports") / f"evaluate-{model.resolve().name}"
    report = stage.run(cfg, Path("."), model_dir=model, out_dir=out)
    typer.echo(stage.summary_markdown(report))


@app.command()
@user_errors
def compare(
    a: Annotated[str, typer.Argument(help="the reference: a git revision, a DVC experiment name, `workspace` or a "
                                     "folder of test decisions.")],
    b: Annotated[str, typer.Argument(help="the model compared with it (reported as B - A).")],
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    predictions: Annotated[str, typer.Option("--predictions", help="where evaluate keeps the per-post test "
                                             "decisions, relative to the project.")] = "reports/evaluate/predictions",
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the full result as JSON here.")] = None,
) -> None:
    """Paired bootstrap of B - A on the same test posts (headline metrics, F1 per criterion) and McNemar on exact
    match; resamples, interval level and seed from params.yaml's evaluate section."""
    from dsm5lab import atomic, comparison

    cfg = _load(params, set_)
    result = comparison.run(Path("."), a, b, predictions, cfg.evaluate.bootstrap_resamples, cfg.seed,
                            round(1 - cfg.evaluate.ci_level, 10))
    headline, criteria = comparison.rows(result)
    level = f"{cfg.evaluate.ci_level:.0%}"
    typer.echo(f"compare: A = {a}, B = {b}, {result['n_posts']} test posts paired, {result['resamples']} resamples "
               f"(seed {result['seed']}), {level} intervals, two-sided p")
    _print_table("headline metrics (test split)", comparison.HEADER, headline, width=110)
    if criteria:
        _print_table("F1 per criterion at the tuned thresholds (p: Holm-adjusted over the nine)", comparison.HEADER,
                     criteria, width=110)
        m = result["mcnemar"]
        typer.echo(f"McNemar (exact) on exact match: A {m['a_exact_match']:.4f}, B {m['b_exact_match']:.4f}; "
                   f"only A right {m['only_a_right']}, only B right {m['only_b_right']}, p = {m['p_value']:.4g}")
    for note in result.get("notes", []):
        typer.echo(f"compare: {note}")
    if json_out is not None:
        atomic.write_json(json_out, result)


@app.command()
@user_errors
def spread(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Train and evaluate the train config once per spread.seeds and/or cross-validate it over prepare's folds
    (spread.cv): metrics/spread.json and reports/spread/summary.md."""
    from dsm5lab.evaluation import spread as spread_mod

    cfg = _with_study(_load_pinned(params, set_))  # the params the train stage trains with
    result = spread_mod.run(cfg, Path("."))
    typer.echo(spread_mod.summary_markdown(result))


@app.command("predict")
@user_errors
def predict_cmd(
    texts: Annotated[list[str] | None, typer.Argument(help="texts to score; '-' or nothing reads stdin.")] = None,
    file: Annotated[Path | None, typer.Option("--file", help="a .txt (one text per line), .jsonl or .csv file.")] = None,
    text_column: Annotated[str, typer.Option("--text-column", help="field/column holding the text.")] = "text",
    model: Annotated[Path | None, typer.Option("--model", help="model directory (default: evaluated, else trained).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="write JSON lines here instead of stdout.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    max_chunks: Annotated[int | None, typer.Option("--max-chunks", min=1, help="windows read per text "
                                                   "(default: all of them, however long the text).")] = None,
) -> None:
    """Criteria probabilities, decisions (tuned thresholds) and evidence for texts, as JSON lines."""
    from dsm5lab import predict as pr
    from dsm5lab.errors import UserError

    if file is not None and texts:
        raise UserError("give texts as arguments or --file, not both")
    if file is not None:
        items = pr.read_file(file, text_column)
    elif texts and texts != ["-"]:
        items = [(str(i), t) for i, t in enumerate(texts)]
    else:
        items = pr.stdin_items()
    if not items:
        raise UserError("no input text (arguments, --file or stdin)")
    model_dir = model if model is not None else pr.default_model()
    results = pr.predict_texts(model_dir, items, batch_size, show_progress=file is not None, max_chunks=max_chunks)
    if out is None:
        pr.write_lines(results, sys.stdout)
        return
    import io

    from dsm5lab import atomic

    buffer = io.StringIO()  # the file appears whole, or not at all
    n = pr.write_lines(results, buffer)
    atomic.write_text(out, buffer.getvalue())
    typer.echo(f"wrote {n} predictions to {out}", err=True)


models_app = typer.Typer(help="The backbone catalog: what each encoder is and whether it loads offline here; `check` one.",
                         invoke_without_command=True)
app.add_typer(models_app, name="models")


@models_app.callback()
@user_errors
def models(ctx: typer.Context) -> None:
    """List the catalog's backbones: family, usable positions, tokenizer, and whether they load offline here."""
    if ctx.invoked_subcommand is not None:
        return
    from dsm5lab.models import catalog

    rows = catalog.table_rows()
    _print_table(f"models: {len(rows)} backbones in src/dsm5lab/models/catalog.yaml", catalog.TABLE_HEADER, rows,
                 width=190, justify="left")
    here = sum(r[-1].startswith("yes") for r in rows)
    typer.echo(f"models: {here} of {len(rows)} load offline here. `dsm5lab models check NAME|DIR` loads one's config "
               "and tokenizer; `dsm5lab preset NAME` writes its recommended values into params.yaml")


@models_app.command("check")
@user_errors
def models_check(
    target: Annotated[str, typer.Argument(metavar="NAME|DIR", help="a catalog name, a model directory or a cached Hub id.")],
) -> None:
    """Load a backbone's config and tokenizer offline (no weights); exit 1 when training would not work."""
    from dsm5lab.models import catalog

    report = catalog.check(target)
    _print_table(f"models check: {target}", ("", "result"), report.rows(), width=120, justify="left")
    if not report.trainable:
        typer.echo(f"models check: {target} cannot be trained here: " + "; ".join(report.problems), err=True)
        raise typer.Exit(code=1)


@app.command()
@user_errors
def preset(
    name: Annotated[str, typer.Argument(help="a catalog name (`dsm5lab models`).")],
    params: ParamsOpt = Path("params.yaml"),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the diff; change nothing.")] = False,
) -> None:
    """Write a backbone's recommended fine-tuning values (catalog) into params.yaml, comments kept; print the diff."""
    from dsm5lab.preset import apply_preset

    changed, diff = apply_preset(name, params, dry_run=dry_run)
    typer.echo(diff, nl=False)
    verb = "would change" if dry_run else "changed"
    typer.echo(f"preset {name}: {verb} {len(changed)} value(s) in {params}")


hpo_app = typer.Typer(help="Hyperparameter search with Optuna: run the stage, add workers, promote, export.",
                      no_args_is_help=True)
app.add_typer(hpo_app, name="hpo")
StorageOpt = Annotated[str, typer.Option("--storage", help="Optuna storage URL (sqlite:///..., journal:<file>, postgresql://...).")]
StudyOpt = Annotated[str, typer.Option("--study", help="study name (printed by `hpo run`, in stages/hpo/storage/storage.json).")]


def _err(line: str) -> None:
    typer.echo(line, err=True)


@hpo_app.command("run")
@user_errors
def hpo_run(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    warm_start: Annotated[str | None, typer.Option(
        "--warm-start", metavar="STUDY", help="run the best trials of this earlier study first (a new study; "
        "as --set hpo.warm_start.study=STUDY, which a DVC run should use instead).")] = None,
    create_only: Annotated[bool, typer.Option(
        "--create-only", help="create (or refresh) the study and print its name, for `hpo worker`s on other "
        "machines; run no trial and write no output.")] = False,
) -> None:
    """The hpo stage: create or resume the study, run trials to hpo.n_trials, write best params and reports."""
    from dsm5lab.hpo import study

    overrides = [*(set_ or []), *([f"hpo.warm_start.study={warm_start}"] if warm_start else [])]
    metrics = study.run(_load_pinned(params, overrides), Path("."), echo=_err, create_only=create_only)
    if create_only:
        typer.echo(metrics["study"])  # alone on stdout, for STUDY=$(dsm5lab hpo run --create-only ...)
        return
    if metrics.get("enabled") is False:
        typer.echo("hpo: disabled (hpo.enabled: false); wrote empty outputs, and train uses params.yaml's values")
        return
    t = metrics["trials"]
    typer.echo(f"hpo: study {metrics['study']}: best trial {metrics['best_trial']} value {metrics['best_value']}; "
               f"{t['complete']} complete, {t['pruned']} pruned, {t['failed']} failed; pruning saved "
               f"{metrics['trial_epochs_saved_by_pruning']} trial-epochs. train trains its best trial "
               "(hpo.enabled); `dsm5lab hpo promote` writes it into params.yaml")


@hpo_app.command("define")
@user_errors
def hpo_define(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """The study stage: write what HPO trials can see to stages/study/definition.json (the hpo stage's dep)."""
    from dsm5lab.hpo.space import write_definition

    path = write_definition(_load(params, set_), Path("."))
    typer.echo(f"study definition: {path}")


@hpo_app.command("worker")
@user_errors
def hpo_worker(
    storage: StorageOpt,
    study_name: StudyOpt,
    device: Annotated[str | None, typer.Option(
        "--device", help="the GPU this worker trains on (its CUDA_VISIBLE_DEVICES): an index, a GPU-/MIG- UUID, "
        "or cpu; default: as the environment has it.")] = None,
) -> None:
    """Join a running study from another process or machine (same commit and prepared data)."""
    from dsm5lab.hpo import devices, study

    n = study.worker(storage, study_name, Path("."), echo=_err,
                     device=None if device is None else devices.parse(device))
    typer.echo(f"hpo worker: finished {n} trial(s) of {study_name} in this process")


@hpo_app.command("promote")
@user_errors
def hpo_promote(
    params: ParamsOpt = Path("params.yaml"),
    best: Annotated[Path, typer.Option("--best", help="best params written by the hpo stage.")] = HPO_BEST,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the diff; change nothing.")] = False,
) -> None:
    """Write the best trial's values into params.yaml (comments and order kept) and print the diff."""
    from dsm5lab.hpo.promote import promote

    changed, diff = promote(best, params, dry_run=dry_run)
    typer.echo(diff, nl=False)
    verb = "would change" if dry_run else "changed"
    typer.echo(f"promote: {verb} {len(changed)} value(s) in {params}" + ("; next: dvc repro" if changed and not dry_run else ""))


@hpo_app.command("export")
@user_errors
def hpo_export(
    storage: StorageOpt,
    study_name: StudyOpt,
    out: Annotated[Path, typer.Option("--out", help="CSV to write (not the stage's own reports/hpo/trials.csv).")] = Path(
        "hpo_trials.csv"),
) -> None:
    """Write the trials table of any study in any storage as CSV."""
    from dsm5lab.hpo import report, study

    found, _ = study.load_from_storage(storage, study_name)
    n = report.write_trials_csv(found, out)
    typer.echo(f"wrote {n} trials of {study_name} to {out}")


@hpo_app.command("compare-pruning")
@user_errors
def hpo_compare_pruning(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    replay: Annotated[Path | None, typer.Option(
        "--replay", help="instead: play today's pruner settings again over the curves of this written "
        "measurement (no training) and rewrite its what-if rows.")] = None,
) -> None:
    """Benchmark: re-run the hpo stage's finished trials without pruning; report the compute pruning saved."""
    from dsm5lab.hpo.compare import OUT, compare_pruning, replay_file

    if replay is not None:
        r = replay_file(replay, _load(params, set_))
        typer.echo(f"{replay}: study {r['study']}, {r['trials']} trials; what-if rows played again")
    else:
        r = compare_pruning(_load_pinned(params, set_), Path("."))
        w, wo = r["with_pruning"], r["without_pruning"]
        typer.echo(f"{r['trials']} trials, {len(r['pruned'])} pruned: {w['trial_seconds']} s / {w['trial_epochs']} "
                   f"trial-epochs with pruning, {wo['trial_seconds']} s / {wo['trial_epochs']} without; saved "
                   f"{r['saved_seconds']} s ({r['saved_share']:.1%}), {r['saved_epochs_share']:.1%} of the "
                   f"trial-epochs. Best with pruning {r['best_with_pruning']}, without {r['best_without_pruning']}. "
                   f"Written to {OUT}")
    typer.echo("the same trials in the same order under other pruner settings (reports run, share saved, best "
               "value of the trials it lets finish):")
    for row in r["what_if"]:
        typer.echo(f"  {row['pruner']:<40} {row['reports_run']:>4}/{row['reports_full']} reports  "
                   f"saved {row['saved_share']:6.1%}  pruned {row['pruned']:>3}  best {row['best_value']}"
                   + ("" if row["keeps_best"] else "  (loses the best trial)"))


@app.command()
@user_errors
def bench(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="epochs per side (default: train.epochs).")] = None,
    max_posts: Annotated[int | None, typer.Option("--max-posts", min=1, help="cap the training posts.")] = None,
    shapes: Annotated[str, typer.Option("--shapes", help="comma-separated backbones to measure, in order.")] = "tiny,minilm",
    levers: Annotated[bool, typer.Option("--levers", help="also retrain each shape once per speed lever.")] = False,
    under_load: Annotated[bool, typer.Option(
        "--under-load", help="instead: tiny in fresh processes beside a job on every core, per OpenMP setting "
        "(under_load.json/.md).")] = False,
    stages: Annotated[bool, typer.Option(
        "--stages", help="instead: time `dvc repro -f` per stage in a scratch clone (stages.json/.md).")] = False,
    out: Annotated[Path, typer.Option("--out", help="folder for bench.json and bench.md.")] = Path("reports/bench"),
) -> None:
    """Benchmarks per shape: our loop vs the Hugging Face Trainer, memory, predict, FLOP/s against a matmul peak."""
    from dsm5lab.errors import UserError

    cfg = _load_pinned(params, set_)  # before torch is imported, so numerics.cpu_isa applies
    if stages or under_load:
        # --stages times the pipeline as it is; --under-load always runs tiny for one epoch
        taken = [flag for flag, given in (("--stages", stages and under_load), ("--levers", levers),
                                         ("--epochs", epochs is not None), ("--shapes", shapes != "tiny,minilm"),
                                         ("--max-posts", stages and max_posts is not None)) if given]
        if taken:
            mode = "--stages" if stages else "--under-load"
            raise UserError(f"bench {mode}: does not take {', '.join(taken)} (it takes --params, --set and --out"
                            + ("" if stages else ", --max-posts") + ")")
    if stages:
        from dsm5lab.bench import run_stage_timing

        run_stage_timing(Path("."), out, list(set_ or []), params_file=params)
        typer.echo((out / "stages.md").read_text())
        return
    if under_load:
        from dsm5lab.bench import run_under_load

        run_under_load(params, list(set_ or []), out, max_posts=max_posts or 64)
        typer.echo((out / "under_load.md").read_text())
        return
    from dsm5lab.bench import run_bench

    run_bench(cfg, Path("."), out, epochs=epochs, max_posts=max_posts,
              shapes=tuple(s.strip() for s in shapes.split(",") if s.strip()), levers=levers)
    typer.echo((out / "bench.md").read_text())


@app.command()
@user_errors
def plots(
    revs: Annotated[list[str] | None, typer.Argument(
        help="git revisions or DVC experiments to compare (as `dvc plots diff`); none: the workspace.")] = None,
    out: Annotated[Path, typer.Option("--out", help="folder for index.html and static/, replaced whole: a new one, "
                                      "or one this command wrote.")] = Path("reports/plots"),
    png: Annotated[bool, typer.Option("--png/--no-png", help="also write PNG beside each SVG.")] = True,
) -> None:
    """The DVC plots as a page that renders offline (no CDN) plus static SVG/PNG per plot, for reports and PRs."""
    from dsm5lab.plots import render

    done = render(Path("."), out, list(revs or []), png=png)
    typer.echo(f"{len(done['plots'])} plots: open {done['page']} in a browser (works offline); "
               f"SVG{'/PNG' if png else ''} in {done['static']}")


tracking_app = typer.Typer(help="Tracking utilities.", no_args_is_help=True)
app.add_typer(tracking_app, name="tracking")


@tracking_app.command("replay")
@user_errors
def tracking_replay(
    buffer: Annotated[Path, typer.Option("--buffer", help="an mlflow_buffer.jsonl written while MLflow was down.")],
    uri: Annotated[str | None, typer.Option("--uri", help="MLflow tracking URI (default: params/env/sqlite).")] = None,
) -> None:
    """Send metrics buffered while MLflow was unreachable."""
    from dsm5lab.errors import UserError
    from dsm5lab.tracking import replay

    if not buffer.is_file():
        raise UserError(f"--buffer: file not found: {buffer}")
    typer.echo(f"replayed {replay(buffer, uri)} records from {buffer}")


retention_app = typer.Typer(help="Keep the best-K checkpoints (weights only) in stages/retention, delete the rest; "
                            "`simulate` a study's pool.", invoke_without_command=True)
app.add_typer(retention_app, name="retention")


@retention_app.callback()
@user_errors
def retention(
    ctx: typer.Context,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="print the plan; write and delete nothing (retention.dry_run: true still writes the reports).")] = False,
) -> None:
    """Keep the best-K checkpoints of train and HPO trials (copied into stages/retention), delete the rest."""
    if ctx.invoked_subcommand is not None:
        return
    from contextlib import nullcontext

    from dsm5lab import retention as stage
    from dsm5lab.lock import project_lock

    cfg = _load(params, set_)
    # one retention at a time: two would delete and copy the same checkpoints; --dry-run writes nothing
    with nullcontext() if dry_run else project_lock(Path("."), "retention", "dsm5lab retention"):
        m = stage.run(cfg, Path("."), dry_run=True if dry_run else None, write=not dry_run)
    b, dry = m["bytes"], m["policy"]["dry_run"]
    gone = m["would_delete" if dry else "deleted"]
    for s in m["skipped"]:
        typer.echo(f"retention: warning: left {s['run']} alone: {s['reason']}", err=True)
    rows = [("-" if t["rank"] is None else str(t["rank"] + 1), t["run"], str(t["step"]),
             "-" if t["score"] is None else f"{t['score']:.4f}", "+".join(t["reasons"])) for t in m["kept"]]
    where = "(plan only)" if dry_run else f"-> {RETAINED}"
    _print_table(f"retention: {len(rows)} kept by {m['policy']['metric']} {where}",
                 ("rank", "run", "step", "score", "kept as"), rows)
    if dry_run:
        for e in gone:
            score = "-" if e["score"] is None else f"{e['score']:.4f}"
            typer.echo(f"would delete {e['run']}/step-{e['step']:08d} (score {score}, {e['reasons'][0]})")
    line = (f"retention: kept {len(m['kept'])}, {'would delete' if dry else 'deleted'} {len(gone)} checkpoint(s); "
            f"checkpoints on disk {b['before']['total'] / 1e6:.1f} MB")
    if b["after"] is not None:
        line += (f" -> {b['after']['total'] / 1e6:.1f} MB ({m['reduction_pct']:.1f}% less; pool "
                 f"{b['after']['pool'] / 1e6:.1f}, tracked {b['after']['tracked'] / 1e6:.1f}, DVC cache "
                 f"{b['after']['dvc_cache'] / 1e6:.1f}); {m['freed_pct']:.1f}% of the {b['written'] / 1e6:.1f} MB "
                 "the runs wrote is freed")
    typer.echo(line + (f"; dry run: would free {m['would_free_bytes'] / 1e6:.1f} MB" if dry else ""))


@retention_app.command("simulate")
@user_errors
def retention_simulate(
    model: Annotated[str, typer.Option("--model", help="parameter count of: bert-base, roberta-base, deberta-v3-base, "
                                       "bert-large, minilm.")] = "bert-base",
    trials: Annotated[int, typer.Option("--trials", min=1)] = 100,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="epochs per trial (one checkpoint each).")] = 4,
    workers: Annotated[str, typer.Option("--workers", help="comma-separated worker counts to compare.")] = "1,4",
    prune_share: Annotated[float, typer.Option("--prune-share", min=0.0, max=1.0)] = 0.5,
    keep_best_k: Annotated[int, typer.Option("--keep-best-k", min=1)] = 3,
    budget_gb: Annotated[float, typer.Option("--budget-gb", min=0.0)] = 1.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    out: Annotated[Path | None, typer.Option("--out", help="also write the table as JSON here.")] = None,
) -> None:
    """Peak disk of a study's checkpoint pool without training: unbounded, bounded, bounded + budget."""
    from dsm5lab import atomic
    from dsm5lab.errors import UserError
    from dsm5lab.pool.simulate import BASE_PARAMS, Setup, table

    if model not in BASE_PARAMS:
        raise UserError(f"--model: {model!r} is not one of {', '.join(BASE_PARAMS)}")
    try:
        counts = [int(w) for w in workers.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise UserError(f"--workers: {workers!r} is not a comma-separated list of counts >= 1 (e.g. 1,4)")
    rows, results = [], []
    for w in counts:
        setup = Setup(params=BASE_PARAMS[model], trials=trials, epochs=epochs, workers=w, prune_share=prune_share,
                      keep_best_k=keep_best_k, budget_gb=budget_gb, seed=seed)
        for r in table(setup):
            results.append({"workers": w, **r})
            rows.append((str(w), r["policy"] + (f" ({budget_gb:g} GB)" if r["budget_gb"] is not None else ""),
                         f"{r['peak_bytes'] / 1e9:.1f}", f"{r['end_bytes'] / 1e9:.1f}", str(r["end_checkpoints"]),
                         f"{r['written_bytes'] / 1e9:.1f}"))
    _print_table(f"retention simulate: {model} ({BASE_PARAMS[model] / 1e6:.0f}M parameters), {trials} trials x up to "
                 f"{epochs} epochs, {prune_share:.0%} pruned early, best {keep_best_k}",
                 ("workers", "policy", "peak GB", "end GB", "end ckpts", "written GB"), rows)
    if out is not None:
        atomic.write_json(out, {"model": model, "parameters": BASE_PARAMS[model], "trials": trials, "epochs": epochs,
                                "prune_share": prune_share, "keep_best_k": keep_best_k, "seed": seed, "rows": results})


gate_app = typer.Typer(help="The CI regression gate: metrics against a committed baseline; `calibrate` its tolerances.",
                       invoke_without_command=True)
app.add_typer(gate_app, name="gate")
GateFileOpt = Annotated[Path, typer.Option("--gate-file", help="tolerances per metric.")]


@gate_app.callback()
@user_errors
def gate(
    ctx: typer.Context,
    rev: Annotated[str, typer.Option("--rev", help="git revision holding the baseline metrics files.")] = "HEAD",
    gate_file: GateFileOpt = Path("gate.yaml"),
    paired: Annotated[bool, typer.Option("--paired/--no-paired", help="run the paired bootstrap against the "
                                         "baseline's test decisions (gate.yaml `paired`).")] = True,
) -> None:
    """Fail (exit 1) when a metric dropped beyond its tolerance against the baseline at --rev."""
    if ctx.invoked_subcommand is not None:
        return
    from dsm5lab import gate as gate_mod

    result = gate_mod.check(Path("."), gate_file, rev, paired=paired)
    typer.echo(f"gate: {result.mode} applies: {result.why}")
    _print_table(f"gate: metrics vs {rev}", gate_mod.HEADER, gate_mod.rows(result))
    if result.paired_note:
        typer.echo(f"gate: {result.paired_note}")
    if gate_mod.paired_rows(result):
        _print_table(f"gate: paired bootstrap, new - {rev}", gate_mod.PAIRED_HEADER, gate_mod.paired_rows(result))
    if any(r.status == "n.s." for r in result.rows):
        typer.echo("gate: n.s. = moved beyond tolerance, but the paired bootstrap finds no significant drop")
    if not result.passed:
        typer.echo(f"gate: {result.n_failed} metric(s) regressed beyond tolerance", err=True)
        if result.differences:
            typer.echo("gate: this machine differs from the calibration in " + "; ".join(result.differences)
                       + " (a machine difference, not necessarily a regression)", err=True)
        elif result.mode == "tolerance" and result.calibrated:
            typer.echo("gate: numerics match the calibration's, so the change is in what the model learned", err=True)
        raise typer.Exit(code=1)
    typer.echo("gate: passed")


@gate_app.command("calibrate")
@user_errors
def gate_calibrate(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    seeds: Annotated[int, typer.Option("--seeds", help="training seeds to run (seed, seed+1, ...).")] = 5,
    gate_file: GateFileOpt = Path("gate.yaml"),
) -> None:
    """Measure each gated metric's spread over training seeds (train + evaluate each) and write it into gate.yaml."""
    from dsm5lab.calibrate import calibrate

    cfg = _with_study(_load_pinned(params, set_))  # the params the train stage trains with
    out = calibrate(cfg, Path("."), gate_file, seeds)
    rows = [(Path(f).stem, k, f"{t['seed_spread']['mean']:.4f}", f"{t['seed_spread']['std']:.4f}",
             f"{t['seed_spread']['range']:.4f}", f"{t['seed_tolerance']:g}")
            for f, keys in out["metrics"].items() for k, t in keys.items()]
    _print_table(f"gate calibrate: {seeds} seeds -> {gate_file}", ("file", "key", "mean", "std", "range",
                                                                    "seed_tolerance"), rows)


_terminated = False


def _on_sigterm(signum, frame) -> None:
    """SIGTERM (`kill`, Slurm, `docker stop`) unwinds like Ctrl-C: a run's tracker ends its MLflow run KILLED
    with a run_end event, dvclive is closed, local HPO workers are stopped, and nothing half-written is
    published (outputs are swapped in only at the end). The train stage first lets its current step finish
    and, after a minute of training, leaves a resume point there (stopping.py)."""
    import signal

    from dsm5lab import stopping

    global _terminated
    _terminated = True
    # a second SIGTERM (cleanup hanging on a stuck server or worker) ends the process the default way
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if stopping.request("SIGTERM"):  # training: stop where the next step begins, with a resume point
        return
    raise KeyboardInterrupt("SIGTERM")


def _on_sigint(signum, frame) -> None:
    """Ctrl-C: inside the train stage's fit (stopping.deferred) the current step finishes and the loop stops where
    the next begins, with a resume point, as for SIGTERM. Raised at once, the KeyboardInterrupt can land in a
    gc callback or a `__del__`, where Python drops it: 1 of 12 Ctrl-Cs to `dsm5lab train` was lost so (the run
    finished, exit 0). A second Ctrl-C while one waits stops at once."""
    import os

    from dsm5lab import stopping

    if stopping.requested() is None and stopping.request("SIGINT"):
        # os.write, not print: a handler that prints inside a print raises "reentrant call"
        os.write(2, b"train: Ctrl-C: stopping where the next step begins (Ctrl-C again to stop now)\n")
        return
    raise KeyboardInterrupt("SIGINT")


def _install_stop_handlers() -> None:
    import signal

    signal.signal(signal.SIGTERM, _on_sigterm)
    # a SIGINT ignored from the start (`nohup`, a shell's background job) stays ignored, as Python leaves it
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)


def main() -> None:
    import signal

    _install_stop_handlers()
    try:
        app()
    except SystemExit:
        if _terminated:  # click turned the KeyboardInterrupt into "Aborted!" and exit 1
            typer.echo("error: stopped by SIGTERM; nothing of this run was published (a training run continues "
                       "from its last checkpoint with `dsm5lab train --resume`)", err=True)
            # A KeyboardInterrupt that ended inside a string exec (a dataclass or namedtuple being built as the
            # SIGTERM came) leaves CPython's "unhandled KeyboardInterrupt" flag set even though it was caught,
            # and under `python -m` (how `hpo run` starts its workers) the process then dies by SIGINT (-2)
            # whatever its exit code. Every string exec resets the flag as it starts.
            exec("None")  # noqa: S102 - a constant: only its side effect on the flag is wanted
            raise SystemExit(128 + signal.SIGTERM) from None
        raise


if __name__ == "__main__":
    main()
