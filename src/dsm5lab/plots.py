"""`dsm5lab plots`: the project's DVC plots as a page that renders with no network, plus static SVG and PNG.

`dvc plots show` writes a page whose vega, vega-lite and vega-embed scripts come from a CDN, so it is blank on an
offline machine (where clinical data usually lives). Here DVC fills the same specs (`dvc plots show --json`, once)
and the page embeds them with those libraries inline, taken from the pinned `vl-convert-python` wheel; the same
package renders every spec to SVG and PNG without a browser, for a report or a PR comment.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from dsm5lab import atomic
from dsm5lab.errors import UserError

OUT = Path("reports/plots")
# DVC's templates, and ours in .dvc/plots, declare the Vega-Lite v5 schema: the page and the static files use
# the newest v5 that vl-convert ships, not its default v6.
VL_VERSION = "5.21"
# written into every folder `dsm5lab plots` makes: the folder is replaced whole, so only such a folder may be
MARKER = ".dsm5lab-plots"

# vegaEmbed is wrapped so that each plot renders as SVG (readable in a DOM dump, sharp when zoomed), without the
# links to the online Vega editor, and marks its div with the outcome (data-rendered="yes" or the error): a
# headless browser, or a person, can tell a drawn plot from a failed one.
_WRAP = """
(function () {
  var embed = window.vegaEmbed;
  window.vegaEmbed = function (el, spec, opts) {
    var div = document.querySelector(el);
    var options = Object.assign({renderer: "svg", actions: {export: true, source: true, compiled: false,
                                                            editor: false}}, opts || {});
    return embed(el, spec, options).then(function (result) {
      div.setAttribute("data-rendered", "yes");
      return result;
    }, function (error) {
      div.setAttribute("data-rendered", "error: " + error);
      throw error;
    });
  };
})();
"""

_PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>dsm5lab plots</title>
<script type="text/javascript">
__BUNDLE__
</script>
<script type="text/javascript">
__WRAP__
</script>
<style>
  body { font-family: sans-serif; margin: 1em 2em; }
  body > div { display: inline-block; vertical-align: top; margin: 0 2em 2em 0; }
</style>
</head>
<body>
<h1>dsm5lab plots</h1>
__DIVS__
</body>
</html>
"""


def page(plots: list[tuple[str, dict]]) -> str:
    """The page: each (div id, filled spec) embedded, the libraries inline (no CDN, no network at all)."""
    import vl_convert

    def embedded(div: str, spec: dict) -> str:
        js = json.dumps(spec).replace("</", "<\\/")  # a "</script>" inside a label must not end the script
        return f'<div id="{div}"><script type="text/javascript">vegaEmbed(\'#{div}\', {js});</script></div>'

    divs = "\n".join(embedded(div, spec) for div, spec in plots)
    bundle = vl_convert.javascript_bundle(vl_version=VL_VERSION)
    return _PAGE.replace("__WRAP__", _WRAP).replace("__DIVS__", divs).replace("__BUNDLE__", bundle)


def _dvc(repo: Path, args: list[str]) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        said = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()] or ["no output"]
        errors = [ln for ln in said if ln.startswith("ERROR:")]  # DVC ends with a "Having any troubles?" footer
        raise UserError(f"`dvc {' '.join(args)}` failed in {repo}: {(errors or said)[-1]}")
    return proc.stdout


def specs(repo: Path, revs: list[str]) -> dict[str, list[dict]]:
    """Each plot id's filled Vega-Lite specs (one per rendered item), as DVC builds them."""
    if not (repo / "dvc.yaml").is_file():
        raise UserError(f"no dvc.yaml in {repo}: run `dsm5lab plots` in the project's root folder")
    cmd = ["plots", "diff", *revs] if revs else ["plots", "show"]
    try:
        shown = json.loads(_dvc(repo, [*cmd, "--json"]))
    except json.JSONDecodeError as exc:
        raise UserError(f"`dvc {' '.join(cmd)} --json` printed no JSON in {repo} ({exc})") from None
    found = {pid: [item["content"] for item in items if item.get("type") == "vega" and item.get("content")]
             for pid, items in (shown.get("data") or {}).items()}
    found = {pid: contents for pid, contents in found.items() if contents}
    if not found:
        errors = shown.get("errors") or []
        broken = [e for e in errors if e.get("type") != "FileNotFoundError"]
        if broken:  # DVC reports a broken dvc.yaml or an unreadable revision here, with exit code 0
            e = broken[0]
            raise UserError(f"DVC could not load the plots in {repo} ({e.get('rev', '?')}): "
                            f"{str(e.get('msg') or e.get('type')).splitlines()[0]}")
        missing = f" ({len(errors)} files missing, {errors[0].get('source')} first)" if errors else ""
        raise UserError(f"no plot data in {repo}{' at ' + ', '.join(revs) if revs else ''}{missing}: "
                        "run `dvc repro` (or `dvc pull`) first")
    return found


def file_stem(plot_id: str) -> str:
    """A plot id ("roc", or a stage plot's path) as a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", plot_id.removesuffix(".csv").removesuffix(".tsv")).strip("_.")


def render(repo: Path = Path("."), out: Path = OUT, revs: list[str] | None = None, png: bool = True) -> dict:
    """Write `out/index.html` (offline) and `out/static/<plot>.svg` (+ `.png`); returns what was written.

    The folder is staged and swapped in whole: a failure leaves the previous one as it was."""
    import vl_convert

    repo, revs = Path(repo).resolve(), list(revs or [])
    out = (out if out.is_absolute() else repo / out).resolve()
    if out == repo or out in repo.parents or (out.exists() and not (out / MARKER).is_file()):
        raise UserError(f"--out {out}: exists and was not written by `dsm5lab plots` (the folder is replaced "
                        "whole); name a new folder, or remove this one first")
    found = specs(repo, revs)
    named: list[tuple[str, str, dict]] = []  # (plot id, file stem and div id, spec)
    for pid, contents in found.items():
        for i, spec in enumerate(contents):
            stem = file_stem(pid) + (f"-{i}" if len(contents) > 1 else "")
            if any(stem == taken for _, taken, _ in named):
                raise UserError(f"plots {pid!r} and another plot id both make the name {stem!r}: rename one in "
                                "dvc.yaml")
            named.append((pid, stem, spec))
    written: dict[str, list[str]] = {}
    with atomic.staged_dir(out) as tmp:
        (tmp / "index.html").write_text(page([(stem, spec) for _, stem, spec in named]), encoding="utf-8")
        (tmp / MARKER).write_text("written by `dsm5lab plots`; replaced whole on the next run\n")
        static = tmp / "static"
        static.mkdir()
        for pid, stem, spec in named:
            try:
                (static / f"{stem}.svg").write_text(vl_convert.vegalite_to_svg(spec, vl_version=VL_VERSION),
                                                    encoding="utf-8")
                if png:
                    (static / f"{stem}.png").write_bytes(
                        vl_convert.vegalite_to_png(spec, vl_version=VL_VERSION, scale=2))
            except ValueError as exc:  # vl-convert reports a spec it cannot compile as ValueError
                raise UserError(f"plot {pid!r} could not be rendered: {str(exc).splitlines()[0]}") from None
            written.setdefault(pid, []).append(stem)
    return {"page": str(out / "index.html"), "static": str(out / "static"), "plots": written}
