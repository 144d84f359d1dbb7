"""The moderators' review page: one self-contained HTML file of report rows with their
heat-map thumbnails, score, URI, model version, scan and error; sortable by score,
filterable by URI text and minimum score, 100 rows a page.

    python -m jobs.report --input reports/scans --html review.html   # writes it (jobs.report)

Safety: every string in the page comes from the data (object keys are chosen by whoever
uploads), so nothing from the data is ever parsed as markup. The rows travel as JSON in a
``<script type="application/json">`` block with ``<``, ``>`` and ``&`` written as
``\\u003c``/``\\u003e``/``\\u0026`` (so ``</script>`` or ``<!--`` inside a key cannot end
the block); the page's one script renders them with DOM APIs and ``textContent`` only.
Static parts (summary table, histograms) are escaped with ``html.escape``. A strict
Content-Security-Policy (no network, images from ``data:`` only, scripts and styles only
by the hashes of the page's own inline blocks) stops injected markup from running even if
escaping ever failed. Thumbnails are re-encoded here (JPEG, longest side
``THUMBNAIL_SIZE``): the page stays small (~6 kB a row, ~60 MB for 10,000 rows) and
only bytes that decode as an image are embedded.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from detector.decode import open_image
from jobs.report.summary import printable


def printable_text(text: str) -> str:
    """``printable`` line by line: newlines kept, other control and bidi characters escaped."""
    return "\n".join(printable(line) for line in text.splitlines())


PAGE_SIZE = 100
THUMBNAIL_SIZE = 160
THUMBNAIL_QUALITY = 75
#: The row fields the page shows, in the order they travel in the JSON block.
COLUMNS = ("uri", "score", "flagged", "model_version", "scan_id", "scan_date", "error", "thumb")


@dataclass(frozen=True)
class ScanPanel:
    """One scan in the page's header: a summary line (label, value pairs) and its histogram."""

    scan_id: str
    facts: tuple[tuple[str, str], ...]
    histogram_png: bytes | None = None
    card: str | None = None  # the model card (jobs.train's MODEL_CARD.md) of the model that scored it


def page_thumbnail(data: bytes | None, *, size: int = THUMBNAIL_SIZE) -> str | None:
    """A ``data:image/jpeg;base64,...`` URI of ``data`` shrunk to ``size`` px, None when
    ``data`` is missing or does not decode as an image."""
    if not data:
        return None
    try:  # open_image: only the allowed formats are parsed (no EPS/Ghostscript, ...)
        with open_image(data) as im:
            im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, much faster
            im = im.convert("RGB")
            im.thumbnail((size, size), Image.Resampling.BILINEAR)
            out = io.BytesIO()
            im.save(out, format="JPEG", quality=THUMBNAIL_QUALITY)
    except Exception:  # noqa: BLE001 - any undecodable blob just has no thumbnail
        return None
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def json_for_script(value: Any) -> str:
    """JSON that is safe inside a ``<script type="application/json">`` element: no ``<``,
    ``>`` or ``&`` (escaped inside strings, never present outside them), ASCII only
    (U+2028/2029 included)."""
    text = json.dumps(value, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def csp_hash(block: str) -> str:
    """The CSP source expression allowing one inline ``<script>``/``<style>`` by content."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(block.encode("utf-8")).digest()).decode("ascii") + "'"


def render_page(rows: Sequence[dict[str, Any]], *, title: str, scans: Sequence[ScanPanel] = (),
                notes: Sequence[str] = (), flagged_only: bool = True) -> str:
    """The page's HTML. ``rows``: dicts with ``COLUMNS`` (``thumb`` a ``page_thumbnail``
    URI or None, ``score`` a float or None, ``scan_date`` a string). ``flagged_only``:
    whether the "flagged only" box starts ticked (it is hidden when every row is flagged)."""
    payload = {"columns": list(COLUMNS), "page_size": PAGE_SIZE, "flagged_only": bool(flagged_only),
               "rows": [[_plain(r.get(c)) for c in COLUMNS] for r in rows]}
    policy = "; ".join([
        "default-src 'none'", "img-src data:", f"style-src {csp_hash(_STYLE)}", f"script-src {csp_hash(_SCRIPT)}",
        "base-uri 'none'", "form-action 'none'",
    ])
    esc = html.escape  # quote=True: safe in text and in quoted attributes
    parts = [
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{esc(policy)}\">\n",
        "<meta name=\"referrer\" content=\"no-referrer\">\n",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
        f"<title>{esc(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n",
        f"<h1>{esc(title)}</h1>\n",
        *(f"<p class=\"note\">{esc(n)}</p>\n" for n in notes),
        _scans_html(scans),
        _CONTROLS,
        f"<script type=\"application/json\" id=\"rows-data\">{json_for_script(payload)}</script>\n",
        f"<script>{_SCRIPT}</script>\n</body>\n</html>\n",
    ]
    return "".join(parts)


def _plain(value: Any) -> Any:
    """JSON-ready: floats rounded (NaN -> None), everything else str/bool/None. Text is
    escaped as the terminal summary escapes it (``printable``): a right-to-left override or a
    zero-width character in a key shows as ``\u202e``, it does not reorder or hide the name."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, float):
        return None if value != value else round(value, 6)
    return printable(str(value))


def _scans_html(scans: Sequence[ScanPanel]) -> str:
    if not scans:
        return ""
    esc = html.escape
    out = ["<section id=\"scans\">\n"]
    for scan in scans:
        facts = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in scan.facts)
        img = ""
        if scan.histogram_png:
            src = "data:image/png;base64," + base64.b64encode(scan.histogram_png).decode("ascii")
            img = f"<img class=\"hist\" src=\"{src}\" alt=\"{esc('score histogram of scan ' + scan.scan_id)}\">"
        card = ""
        if scan.card:
            card = f"<details class=\"card\"><summary>model card</summary><pre>{esc(printable_text(scan.card))}</pre></details>"
        out.append(f"<div class=\"scan\"><dl>{facts}{card}</dl>{img}</div>\n")
    out.append("</section>\n")
    return "".join(out)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1em 2em; color: #222; }
h1 { font-size: 1.4em; } .note { color: #555; margin: .2em 0; }
#scans { display: flex; flex-wrap: wrap; gap: 1em; margin: 1em 0; }
.scan { border: 1px solid #ccc; border-radius: 6px; padding: .5em; display: flex; gap: 1em; align-items: center; }
.scan dl { display: grid; grid-template-columns: auto auto; gap: .1em .8em; margin: 0; font-size: .9em; }
.scan dt { color: #666; } .scan dd { margin: 0; font-family: ui-monospace, monospace; }
.hist { width: 420px; } .card pre { white-space: pre-wrap; max-width: 60em; font-size: .8em; }
#controls { position: sticky; top: 0; background: #fff; padding: .5em 0; border-bottom: 1px solid #ccc; display: flex; flex-wrap: wrap; gap: 1em; align-items: center; }
table { border-collapse: collapse; width: 100%; margin-top: .5em; }
th, td { border-bottom: 1px solid #eee; padding: .3em .5em; text-align: left; vertical-align: top; }
th.sortable { cursor: pointer; user-select: none; text-decoration: underline dotted; }
td.uri { font-family: ui-monospace, monospace; word-break: break-all; max-width: 40em; white-space: pre-wrap; }
td.score { font-variant-numeric: tabular-nums; font-weight: bold; }
td.error { color: #a00; white-space: pre-wrap; }
tr.flagged td.score { color: #b00; }
img.thumb { width: 128px; height: auto; display: block; }
.empty { color: #777; padding: 1em; }
"""

_CONTROLS = """<div id="controls">
<label>URI contains <input id="filter-uri" type="search" size="40" autocomplete="off"></label>
<label>min score <input id="filter-min" type="number" min="0" max="1" step="0.01" value="0"></label>
<label id="flagged-only-label"><input id="flagged-only" type="checkbox"> flagged only</label>
<label>sort <select id="sort"><option value="desc">score, highest first</option><option value="asc">score, lowest first</option></select></label>
<button id="prev" type="button">&larr; previous</button>
<span id="page-info"></span>
<button id="next" type="button">next &rarr;</button>
<span id="match-count"></span>
</div>
<noscript><p class="empty">This page needs JavaScript to list the images.</p></noscript>
<table id="rows">
<thead><tr><th>heat map</th><th class="sortable" id="sort-score">score</th><th>URI</th><th>model version</th><th>scan</th><th>error</th></tr></thead>
<tbody></tbody>
</table>
"""

# The page's only script. DOM APIs and textContent only: data never reaches innerHTML.
_SCRIPT = """
(function () {
  "use strict";
  var payload = JSON.parse(document.getElementById("rows-data").textContent);
  var cols = payload.columns, pageSize = payload.page_size;
  var rows = payload.rows.map(function (r) {
    var o = {};
    for (var i = 0; i < cols.length; i++) { o[cols[i]] = r[i]; }
    o.uriLower = String(o.uri).toLowerCase();
    return o;
  });
  var $ = function (id) { return document.getElementById(id); };
  var body = document.querySelector("#rows tbody");
  var state = { page: 0, desc: true, text: "", min: 0, flaggedOnly: payload.flagged_only };
  var allFlagged = rows.every(function (r) { return r.flagged === true; });
  $("flagged-only").checked = state.flaggedOnly;
  if (allFlagged) { $("flagged-only-label").hidden = true; }
  var shown = [];

  function cell(tr, cls, text) {
    var td = document.createElement("td");
    if (cls) { td.className = cls; }
    if (text !== null && text !== undefined) { td.textContent = String(text); }
    tr.appendChild(td);
    return td;
  }

  function compare(a, b) {
    var sa = a.score === null ? -1 : a.score, sb = b.score === null ? -1 : b.score;
    if (sa !== sb) { return state.desc ? sb - sa : sa - sb; }
    return a.uri < b.uri ? -1 : (a.uri > b.uri ? 1 : 0);
  }

  function select() {
    var text = state.text.toLowerCase(), min = state.min;
    shown = rows.filter(function (r) {
      if (state.flaggedOnly && r.flagged !== true) { return false; }
      if (min > 0 && (r.score === null || r.score < min)) { return false; }
      return text === "" || r.uriLower.indexOf(text) !== -1;
    });
    shown.sort(compare);
    state.page = 0;
    draw();
  }

  function draw() {
    var pages = Math.max(1, Math.ceil(shown.length / pageSize));
    state.page = Math.min(Math.max(0, state.page), pages - 1);
    var start = state.page * pageSize, part = shown.slice(start, start + pageSize);
    var trs = part.map(function (r) {
      var tr = document.createElement("tr");
      tr.className = "row" + (r.flagged === true ? " flagged" : "");
      var td = cell(tr, "thumb-cell", null);
      if (typeof r.thumb === "string" && r.thumb.indexOf("data:image/jpeg;base64,") === 0) {
        var img = document.createElement("img");
        img.className = "thumb";
        img.loading = "lazy";
        img.alt = "heat map";
        img.src = r.thumb;
        td.appendChild(img);
      } else {
        td.textContent = "(no thumbnail)";
      }
      cell(tr, "score", r.score === null ? "-" : r.score.toFixed(4));
      cell(tr, "uri", r.uri);
      cell(tr, "model", r.model_version);
      cell(tr, "scan-ref", r.scan_id + " (" + r.scan_date + ")");
      cell(tr, "error", r.error);
      return tr;
    });
    if (trs.length === 0) {
      var tr = document.createElement("tr");
      var td = cell(tr, "empty", rows.length ? "no images match the filters" : "no images in this selection");
      td.colSpan = 6;
      trs.push(tr);
    }
    body.replaceChildren.apply(body, trs);
    $("page-info").textContent = "page " + (state.page + 1) + " of " + pages;
    $("match-count").textContent = shown.length + " of " + rows.length + " images";
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
    $("sort-score").textContent = "score " + (state.desc ? "\\u25bc" : "\\u25b2");
  }

  $("filter-uri").addEventListener("input", function (e) { state.text = e.target.value; select(); });
  $("filter-min").addEventListener("input", function (e) {
    var v = parseFloat(e.target.value); state.min = isNaN(v) ? 0 : v; select();
  });
  $("flagged-only").addEventListener("change", function (e) { state.flaggedOnly = e.target.checked; select(); });
  $("sort").addEventListener("change", function (e) { state.desc = e.target.value === "desc"; select(); });
  $("sort-score").addEventListener("click", function () {
    state.desc = !state.desc; $("sort").value = state.desc ? "desc" : "asc"; select();
  });
  $("prev").addEventListener("click", function () { state.page -= 1; draw(); window.scrollTo(0, 0); });
  $("next").addEventListener("click", function () { state.page += 1; draw(); window.scrollTo(0, 0); });
  document.body.setAttribute("data-rows", String(rows.length));
  select();
})();
"""
