"""The run report: one self-contained HTML file stored next to the run's manifest.

``dt=D/run=R/publish=T/report.html`` shows what the run did, from its manifest, and how it compares
with the runs published before it, from their manifests:

- rows read, accepted, quarantined and duplicates per day (chart), quarantine reasons;
- training settings, the sizing and every spark-submit attempt;
- where each training parameter came from and, when the run searched them, every trial
  (params, rung, validation metric, seconds) with a chart;
- the metrics @k against the popularity baseline (chart), the bootstrap interval of the lift and
  the quality gate decision;
- the primary metric and training time of previous runs over time (charts).

Charts are PNGs drawn with matplotlib's Agg backend and embedded as ``data:`` URIs, so the
file opens anywhere with no network access and nothing next to it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import io
import logging

import matplotlib

matplotlib.use("Agg")  # no display on workers
import matplotlib.pyplot as plt  # noqa: E402

from music_recs.convergence import warm_start_line  # noqa: E402
from music_recs.quality_gate import expectation_bounds, lift_summary, percent_change, relative_interval  # noqa: E402
from music_recs.rules import rules_line  # noqa: E402
from music_recs_airflow.publish import MANIFEST, PUBLICATION, PublishError, read_manifest  # noqa: E402
from music_recs_airflow.s3 import S3Store  # noqa: E402

log = logging.getLogger(__name__)

REPORT = "report.html"
HISTORY_DAYS = 60  # previous days shown in the charts over time
METRICS = ("precision", "recall", "map", "ndcg")
_MODEL_COLOR, _BASELINE_COLOR = "#1f77b4", "#aaaaaa"


# --- previous runs ---------------------------------------------------------------------
def previous_manifests(store: S3Store, bucket: str, models_prefix: str, day: str, run_key: str,
                       history_days: int = HISTORY_DAYS) -> list[dict]:
    """Manifests published for the ``history_days`` days up to ``day``, oldest first, this run excluded.

    Reads ``{models_prefix}/dt=*/run=*/publish=*/manifest.json`` (and ``dt=*/run=*/manifest.json``,
    where publications went before they had their own folder); a manifest that does not parse is
    skipped with a warning (it cannot be fixed by failing this run's publication).
    """
    first = (dt.date.fromisoformat(day) - dt.timedelta(days=history_days)).isoformat()
    keys = []
    for obj in store.list_objects(bucket, f"{models_prefix}/dt="):
        parts = obj.key[len(models_prefix) + 1:].split("/")
        if parts[-1] != MANIFEST or not (len(parts) == 3 or (len(parts) == 4 and parts[2].startswith(PUBLICATION))):
            continue
        obj_day, obj_run = parts[0].removeprefix("dt="), parts[1].removeprefix("run=")
        if first <= obj_day <= day and obj_run != run_key:
            keys.append(obj.key)
    manifests = []
    for key in keys:
        try:
            manifest = read_manifest(store, bucket, key, models_prefix)
        except PublishError as exc:
            log.warning("skipping a publication in the report: %s", exc)
            continue
        if "day" in manifest:
            manifests.append(manifest)
    return sorted(manifests, key=lambda m: (m["day"], m.get("published_at", "")))


def last_run_per_day(manifests: list[dict]) -> list[dict]:
    """One manifest per day: the last published (manifests sorted by day, then publication)."""
    by_day = {}
    for m in manifests:
        by_day[m["day"]] = m
    return [by_day[d] for d in sorted(by_day)]


# --- charts ----------------------------------------------------------------------------
def png_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _rows(m: dict, name: str) -> int:
    return int((m.get("rows") or {}).get(name, 0) or 0)


def chart_rows_per_day(runs: list[dict]) -> str:
    days = [m["day"] for m in runs]
    series = [("read", "rows_read", "#555555"), ("accepted", "rows_accepted", "#2ca02c"),
              ("quarantined", "rows_quarantined", "#d62728"), ("duplicates", "duplicates_removed", "#ff7f0e")]
    fig, ax = plt.subplots(figsize=(7, 3))
    width = 0.8 / len(series)
    for i, (label, key, color) in enumerate(series):
        ax.bar([x + (i - 1.5) * width for x in range(len(days))], [_rows(m, key) for m in runs], width,
               label=label, color=color)
    ax.set_xticks(range(len(days)), days, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("rows")
    ax.set_title("Stream log rows per day")
    ax.legend(fontsize=8)
    return png_data_uri(fig)


def chart_metrics_vs_baseline(manifest: dict) -> str:
    metrics = manifest["metrics"]
    k = metrics["k"]
    fig, ax = plt.subplots(figsize=(7, 3))
    xs = range(len(METRICS))
    ax.bar([x - 0.2 for x in xs], [metrics["model"][n] for n in METRICS], 0.4, label="ALS model",
           color=_MODEL_COLOR)
    ax.bar([x + 0.2 for x in xs], [metrics["baseline_popularity"][n] for n in METRICS], 0.4,
           label="most popular", color=_BASELINE_COLOR)
    ax.set_xticks(list(xs), [f"{n}@{k}" for n in METRICS])
    ax.set_title(f"Metrics of dt={manifest['day']} against the popularity baseline")
    ax.legend(fontsize=8)
    return png_data_uri(fig)


def chart_trials(searched: dict) -> str:
    """Each trial's validation metric, in the order they ran; the winner marked."""
    trials = searched["trials"]
    fig, ax = plt.subplots(figsize=(7, 3))
    for rung, marker, label in ((0, "o", "first rung"), (1, "s", "all iterations")):
        pts = [(i, t["metric"]) for i, t in enumerate(trials) if t["rung"] == rung]
        if pts:
            ax.plot(*zip(*pts), marker, color=_MODEL_COLOR if rung else _BASELINE_COLOR, label=label)
    best = searched.get("winner") or {}
    won = [i for i, t in enumerate(trials) if t["trial"] == best.get("trial") and t["rung"] == best.get("rung")]
    if won:
        ax.plot(won, [trials[won[0]]["metric"]], "*", ms=16, color="#2ca02c", label="chosen")
    ax.set_xlabel("trial, in the order run")
    ax.set_ylabel(f"{searched.get('metric', 'map')}@{searched.get('k', '')} (validation)")
    ax.set_title("Parameter search on the validation days")
    ax.legend(fontsize=8)
    return png_data_uri(fig)


def tuning_section(training: dict) -> list[str]:
    searched = training.get("tuning") or {}
    source = searched.get("source") or {}
    params = training.get("params") or {}
    parts = ["<h3>Where the parameters came from</h3>",
             _table(["parameter", "value", "from"], [[n, params.get(n), src] for n, src in sorted(source.items())])
             if source else "<p>Not recorded.</p>"]
    trials = searched.get("trials") or []
    if trials:
        metric = f"{searched.get('metric')}@{searched.get('k')}"
        parts += [
            f"<h3>Parameter search ({len(trials)} trials, {_e(_fmt(searched.get('seconds')))} s)</h3>",
            f"<p>Trained on the days up to the validation days, scored on {_e(metric)} of "
            f"{_e((searched.get('split') or {}).get('validation_users'))} validation users; the held-out days "
            "never chose a parameter.</p>",
            _table(["trial", "rung", "iterations", "rank", "alpha", "reg", "reg scaling", "f", "epsilon",
                    f"{metric} validation", "seconds"],
                   [[t["trial"], t["rung"], t["iterations"], t["params"]["rank"], t["params"]["alpha"],
                     t["params"]["reg"], t["params"]["reg_scaling"], t["params"]["confidence_function"],
                     t["params"]["epsilon"], t["metric"], t["seconds"]] for t in trials]),
            _img(chart_trials(searched), "parameter search trials"),
        ]
    return parts


def output_checks_section(checks: dict | None) -> list[str]:
    """The output suites' verdict, what they measured, each expectation, and the Data Docs link."""
    parts = ["<h2>Output checks</h2>"]
    if not checks:
        return [*parts, "<p>Not run for this model.</p>"]
    summary = checks.get("summary") or {}
    verdict = "passed" if checks["success"] else "failed"
    churn = summary.get("churn_overlap")
    parts += [
        f"<p>Output suites <b class='{'pass' if checks['success'] else 'fail'}'>{verdict}</b>: catalogue coverage "
        f"{_e(_fmt(summary.get('catalogue_coverage')))}, share of slots taken by the "
        f"{_e(summary.get('popular_items'))} most popular items {_e(_fmt(summary.get('popular_share')))}, "
        + (f"mean top-k overlap with the published model {_e(_fmt(churn))} over {_e(summary.get('churn_users'))} users"
           if churn is not None else f"churn {_e(checks.get('churn') or 'not checked')}")
        + (f"; <a href='{_e(checks['data_docs'])}'>GX Data Docs</a>" if checks.get("data_docs") else "") + ".</p>",
        _table(["suite", "column", "expectation", "observed", "bound", "result"],
               [[c["suite"], c.get("column"), c["expectation"],
                 c["observed_value"] if c.get("observed_value") is not None
                 else f"{c.get('unexpected_count')} of {c.get('element_count')} outside",
                 expectation_bounds(c.get("kwargs") or {}), "pass" if c["success"] else "FAIL"] for c in checks["checks"]]),
    ]
    return parts


def rules_section(rules: dict | None, top_n) -> list[str]:
    """The rules every published top-N obeyed (artist cap, do-not-recommend list) and what they did."""
    parts = ["<h2>Recommendation rules</h2>", f"<p>{_e(rules_line(rules, top_n))}.</p>"]
    listed = (rules or {}).get("do_not_recommend")
    if listed:
        parts.append(_table(["do-not-recommend list", "value"], [[n, listed.get(n)] for n in (
            "uri", "sha256", "rows", "items_for_everyone", "user_item_pairs", "items_in_matrix", "pairs_in_matrix")]))
    return parts


def lift_line(metrics: dict, primary: str) -> str:
    lift = (metrics.get("lift_over_popularity") or {}).get(primary)
    if not lift:
        return ""
    interval = relative_interval(lift)
    if interval is None:
        return f"<p>Lift of {_e(primary)} over popularity: {_e(lift_summary(lift))}.</p>"
    low, high = interval
    return (f"<p>Lift of {_e(primary)} over popularity: <b>{_e(percent_change(lift['relative']))}</b>, "
            f"{lift['level']:.0%} bootstrap interval [{_e(percent_change(low))}, {_e(percent_change(high))}] over "
            f"{lift['users']} evaluated users (difference {lift['difference']:+.4f}, interval "
            f"[{lift['difference_interval'][0]:+.4f}, {lift['difference_interval'][1]:+.4f}]).</p>")


def chart_metric_over_time(runs: list[dict], metric: str, current_day: str) -> str:
    days = [m["day"] for m in runs]
    xs = range(len(days))  # positions, not date strings: matplotlib would guess units from those
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot(xs, [m["metrics"]["model"].get(metric, 0.0) for m in runs], "o-", color=_MODEL_COLOR,
            label="ALS model")
    ax.plot(xs, [m["metrics"]["baseline_popularity"].get(metric, 0.0) for m in runs], "s--",
            color=_BASELINE_COLOR, label="most popular")
    if current_day in days:
        i = days.index(current_day)
        ax.plot([i], [runs[i]["metrics"]["model"].get(metric, 0.0)], "o", ms=12, mfc="none", mec="black",
                label="this run")
    ax.set_title(f"{metric} per day (last published run of each day)")
    ax.set_xticks(list(xs), days, rotation=45, ha="right", fontsize=8)
    ax.legend(fontsize=8)
    return png_data_uri(fig)


def chart_training_over_time(runs: list[dict]) -> str:
    days = [m["day"] for m in runs]
    seconds = [float(((m.get("training") or {}).get("seconds") or {}).get("fit", 0.0)) for m in runs]
    attempts = [len((((m.get("training") or {}).get("submission") or {}).get("attempts")) or [1]) for m in runs]
    fig, ax = plt.subplots(figsize=(7, 3))
    bars = ax.bar(range(len(days)), seconds, color=["#d62728" if a > 1 else _MODEL_COLOR for a in attempts])
    for bar, a in zip(bars, attempts):
        ax.annotate(f"{a} attempt{'s' if a > 1 else ''}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=7)
    ax.set_ylabel("ALS fit seconds")
    ax.set_title("Training time per day (red: resubmitted)")
    ax.set_xticks(range(len(days)), days, rotation=45, ha="right", fontsize=8)
    return png_data_uri(fig)


# --- HTML ------------------------------------------------------------------------------
def _e(value) -> str:
    return html.escape(str(value))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{_e(alt)}">'


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:60em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.pass{color:#2ca02c}.fail{color:#d62728}
"""


def build_report(manifest: dict, history: list[dict]) -> str:
    """The HTML report of the run described by ``manifest`` (which has ``day`` and ``run_id``)."""
    day = manifest["day"]
    runs = last_run_per_day([*(m for m in history if m["day"] != day), manifest])
    metrics, gate, training = manifest["metrics"], manifest["quality_gate"], manifest.get("training") or {}
    primary = manifest["params"].get("primary_metric", "map")
    k = metrics["k"]
    submission = training.get("submission") or {}
    window = manifest.get("data_window") or {}

    reasons = sorted((manifest.get("quarantine") or {}).get("reasons", {}).items(), key=lambda kv: -kv[1])
    attempts = submission.get("attempts") or []
    attempt_rows = []
    for a in attempts:
        s = a.get("settings") or submission.get("sizing") or {}
        attempt_rows.append([a.get("attempt"), a.get("outcome"), a.get("seconds"), s.get("executor_memory_mb"),
                             s.get("executor_cores"), s.get("num_executors"), s.get("user_blocks"),
                             s.get("item_blocks"), s.get("checkpoint_interval"), "; ".join(a.get("log") or [])])
    published = gate.get("published")
    verdict = "passed" if gate.get("passed") else ("failed, overridden" if gate.get("overridden") else "failed")

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>music_recs dt={_e(day)} run {_e(manifest['run_id'])}</title><style>{_STYLE}</style></head><body>",
        f"<h1>music_recs_daily: dt={_e(day)}</h1>",
        f"<p>run <code>{_e(manifest['run_id'])}</code>, code {_e(manifest.get('code_version', ''))}, "
        f"published to <code>{_e(manifest.get('prefix', ''))}</code>; data window "
        f"{_e(window.get('first_day', ''))} .. {_e(day)}, trained on the days up to "
        f"{_e(window.get('last_train_day', ''))}, held out {_e(', '.join(window.get('holdout_days', [])))}</p>",
        "<h2>Rows</h2>",
        _table(["day", "read", "accepted", "quarantined", "duplicates"],
               [[m["day"], _rows(m, "rows_read"), _rows(m, "rows_accepted"), _rows(m, "rows_quarantined"),
                 _rows(m, "duplicates_removed")] for m in runs]),
        _img(chart_rows_per_day(runs), "rows per day"),
        f"<p>Quarantine of dt={_e(day)}: <code>{_e((manifest.get('quarantine') or {}).get('uri', ''))}</code></p>",
        _table(["reason", "rows"], [[r, n] for r, n in reasons]) if reasons else "<p>No row was quarantined.</p>",
        "<h2>Training</h2>",
        _table(["setting", "value"], [[n, v] for n, v in sorted((training.get("params") or {}).items())]
               + [[f"matrix {n}", v] for n, v in sorted((training.get("data") or {}).items())]
               + [["iterations run", training.get("iterations")],
                  ["fit seconds", (training.get("seconds") or {}).get("fit")],
                  ["seconds per iteration", training.get("seconds_per_iteration")]]),
        f"<p>{_e(warm_start_line(training['warm_start'], training.get('iterations')))}.</p>"
        if training.get("warm_start") else "",
        *tuning_section(training),
        "<h3>spark-submit attempts</h3>",
        _table(["attempt", "outcome", "seconds", "executor MB", "cores", "executors", "user blocks",
                "item blocks", "checkpoint interval", "decisive log lines"], attempt_rows)
        if attempt_rows else "<p>No attempt recorded.</p>",
        "<h2>Metrics</h2>",
        f"<p>Quality gate on {_e(primary)}@{_e(k)}: <b class='{'pass' if gate.get('passed') else 'fail'}'>"
        f"{_e(verdict)}</b>; model {_e(_fmt(gate.get('candidate')))}, popularity baseline "
        f"{_e(_fmt(gate.get('baseline')))}, previously published model "
        f"{_e('none' if published is None else _fmt(published))}"
        f"{_e(' (' + '; '.join(gate['reasons']) + ')') if gate.get('reasons') else ''}</p>",
        f"<p>Published model {_e(metrics.get('comparison') or gate.get('comparison') or 'not recorded')}.</p>",
        lift_line(metrics, primary),
        _table(["metric", "ALS model", "most popular"],
               [[f"{n}@{k}", metrics["model"][n], metrics["baseline_popularity"][n]] for n in METRICS]
               + [["coverage", metrics["model"].get("coverage"), metrics["baseline_popularity"].get("coverage")],
                  ["users evaluated", metrics["model"].get("users_evaluated"),
                   metrics["baseline_popularity"].get("users_evaluated")]]),
        _img(chart_metrics_vs_baseline(manifest), "metrics against the popularity baseline"),
        *rules_section(manifest.get("rules"), (manifest.get("params") or {}).get("top_n")),
        *output_checks_section(manifest.get("output_checks")),
        "<h2>Previous runs</h2>",
        _table(["day", "run", f"{primary}@k model", f"{primary}@k popularity", "rank", "fit seconds"],
               [[m["day"], m["run_id"], m["metrics"]["model"].get(primary), m["metrics"]["baseline_popularity"].get(primary),
                 ((m.get("training") or {}).get("params") or m.get("params") or {}).get("rank"),
                 ((m.get("training") or {}).get("seconds") or {}).get("fit")]
                for m in runs]),
        _img(chart_metric_over_time(runs, primary, day), f"{primary} over time"),
        _img(chart_training_over_time(runs), "training time over time"),
        "</body></html>",
    ]
    return "\n".join(parts)


def publish_report(store: S3Store, bucket: str, models_prefix: str, prefix: str, manifest: dict,
                   run_key: str) -> dict:
    """Build the report, upload it to ``{prefix}report.html``, read it back; returns its key, size, SHA-256."""
    history = previous_manifests(store, bucket, models_prefix, manifest["day"], run_key)
    body = build_report(manifest, history).encode()
    key = prefix + REPORT
    store.create_bytes(bucket, key, body, "text/html; charset=utf-8")
    got = store.get_bytes(bucket, key)
    digest = hashlib.sha256(body).hexdigest()
    if got is None or hashlib.sha256(got[0]).hexdigest() != digest:
        raise RuntimeError(f"s3://{bucket}/{key} does not match the report that was uploaded")
    log.info("run report s3://%s/%s (%d bytes, %d previous runs)", bucket, key, len(body), len(history))
    return {"key": key, "size": len(body), "sha256": digest}
