"""``music-recs``: the command line around the pipeline.

    music-recs s3 start|stop|status          local S3-compatible server (moto) on 127.0.0.1
    music-recs seed --end-day D --days N     create buckets, write N days of sample logs to landing
    music-recs ingest --from-day D1 --to-day D2   ingest + validate days into the lake (no training)
    music-recs latest                        where the latest model is and its headline metrics
    music-recs recommend --user USER_ID      top recommendations of the latest model for a user

S3 is reached through the Airflow connection ``aws_default`` (environment variable
``AIRFLOW_CONN_AWS_DEFAULT`` outside Airflow), like the DAG does; ``latest`` and ``recommend``
only read, through the read-only connection ``consumer_aws_conn_id`` (``aws_models_reader``), and
read every object through the verified path (``publish.read_latest``, ``publish.read_parquet``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from urllib.parse import urlparse

from music_recs.checks import parse_day
from music_recs.convergence import warm_start_line
from music_recs.failures import PermanentFailure
from music_recs.names import clean_name
from music_recs.params import RunParams
from music_recs.quality_gate import lift_summary
from music_recs.rules import rules_line
from music_recs.settings import local_settings, resolve
from music_recs_airflow.publish import PublishError, read_latest, read_parquet
from music_recs_airflow.s3 import S3Store, S3Unreachable
from airflow.sdk.exceptions import AirflowFailException


def _store() -> S3Store:
    return S3Store.from_airflow(resolve().aws_conn_id)


def _reader() -> S3Store:
    """The models bucket, read-only (``consumer_aws_conn_id``)."""
    return S3Store.from_airflow(resolve().consumer_aws_conn_id)


def cmd_s3(args) -> int:
    from music_recs_dev import local_s3  # dev tooling: the one-machine S3 server

    local = local_settings()
    port = local.s3_port
    pid_path = os.path.join(local.state_dir, "s3.pid")
    if args.action == "start":
        proc = local_s3.start(port, os.path.join(local.state_dir, "s3.log"), pid_path)
        print(f"S3 server {'started' if proc else 'already running'} at {local_s3.endpoint(port)}")
    elif args.action == "stop":
        print("S3 server stopped" if local_s3.stop(pid_path) else "no S3 server started from here")
    else:
        up = local_s3.is_up(port)
        print(f"S3 server at {local_s3.endpoint(port)}: {'up' if up else 'down'}")
        return 0 if up else 1
    return 0


def cmd_seed(args) -> int:
    from music_recs_dev.sample_data import Catalogue, CatalogueSpec, upload_days  # dev tooling: generated logs

    cfg = resolve()
    store = _store()
    lake = urlparse(cfg.lake_uri)
    for bucket in (cfg.raw_bucket, cfg.models_bucket, *([lake.netloc] if lake.scheme == "s3a" else [])):
        store.ensure_bucket(bucket)
    end = parse_day(args.end_day, "--end-day")
    days = [end - dt.timedelta(days=i) for i in range(args.days - 1, -1, -1)]
    spec = CatalogueSpec.for_plays_per_day(args.plays, seed=args.seed)
    rows = upload_days(store, cfg.raw_bucket, cfg.landing_prefix, days, args.plays, Catalogue(spec))
    print(f"wrote {rows} plays ({args.plays}/day, {spec.users} users, {spec.artists * spec.tracks_per_artist} tracks) "
          f"to s3://{cfg.raw_bucket}/{cfg.landing_prefix}/ for {days[0]}..{days[-1]}")
    return 0


def cmd_ingest(args) -> int:
    """Load history into the lake with the DAG's own ingest and validate steps (first deployment)."""
    from music_recs_airflow import tasks

    cfg = resolve()
    store = _store()
    first, last = parse_day(args.from_day, "--from-day"), parse_day(args.to_day, "--to-day")
    if last < first:
        raise ValueError(f"--to-day {last} is before --from-day {first}")
    day = first
    while day <= last:
        start = dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc)
        plan = tasks.plan_run({}, start, f"cli_ingest__{day.isoformat()}", cfg)
        result = tasks.ingest(store, plan, writer="")  # the lease names this process (user@host pid)
        tasks.validate(plan, result)
        print(f"dt={day}: read {result.rows_read}, accepted {result.rows_accepted}, "
              f"quarantined {result.rows_quarantined}, duplicates {result.duplicates_removed}; valid")
        day += dt.timedelta(days=1)
    return 0


def cmd_latest(args) -> int:
    cfg = resolve()
    store = _reader()
    pointer, manifest = read_latest(store, cfg.models_bucket, cfg.pointer_key, args.allow_pointer_rewind)
    m, b = manifest["metrics"]["model"], manifest["metrics"]["baseline_popularity"]
    k = manifest["metrics"]["k"]
    print(f"latest model: day {pointer['day']}, run {pointer['run_id']}")
    print(f"  published at s3://{cfg.models_bucket}/{pointer['prefix']}")
    print(f"  rows read {manifest['rows']['rows_read']}, accepted {manifest['rows']['rows_accepted']}, "
          f"quarantined {manifest['rows']['rows_quarantined']}")
    print(f"  matrix {manifest['matrix']['users']} users x {manifest['matrix']['items']} items, "
          f"{manifest['matrix']['nnz']} non-zeros")
    print(f"  precision@{k} {m['precision']:.4f} (popularity {b['precision']:.4f}), "
          f"MAP@{k} {m['map']:.4f} (popularity {b['map']:.4f}), NDCG@{k} {m['ndcg']:.4f}, "
          f"recall@{k} {m['recall']:.4f}, coverage {m['coverage']:.3f}")
    primary = manifest["params"].get("primary_metric", "map")
    lift = (manifest["metrics"].get("lift_over_popularity") or {}).get(primary)
    if lift:
        print(f"  {primary}@{k} over popularity: {lift_summary(lift)}")
    checks = manifest.get("output_checks")
    if checks:
        s = checks.get("summary") or {}
        churn = (f", top-{k} overlap with the model before {s['churn_overlap']:.2f}" if s.get("churn_overlap")
                 is not None else "")
        print(f"  output checks {'passed' if checks['success'] else 'failed: ' + '; '.join(checks['failed'])}: "
              f"catalogue coverage {s.get('catalogue_coverage', 0):.3f}, slots of the top 1% items "
              f"{s.get('popular_share', 0):.3f}{churn}")
    print(f"  {rules_line(manifest.get('rules'), manifest['params'].get('top_n'))}")
    warm = (manifest.get("training") or {}).get("warm_start")
    if warm:
        print(f"  {warm_start_line(warm, manifest['training'].get('iterations'))}")
    searched = (manifest.get("training") or {}).get("tuning") or {}
    if searched.get("source"):
        trained = manifest["training"]["params"]
        print("  trained with: " + ", ".join(f"{n}={trained.get(n)} ({src})"
                                             for n, src in sorted(searched["source"].items())))
    if (manifest.get("metrics") or {}).get("comparison"):
        print(f"  published model {manifest['metrics']['comparison']}")
    used = {k: v for k, v in manifest["params"].items() if k in RunParams.__dataclass_fields__}
    changed = RunParams(**used).changed()
    print("  params: " + (", ".join(f"{k}={v}" for k, v in changed.items()) + " (others default)" if changed
                          else "all default"))
    if manifest.get("report"):
        print(f"  report: s3://{cfg.models_bucket}/{manifest['report']['key']}")
    user = first_user(store, cfg.models_bucket, manifest)
    if user:
        print(f"  try: music-recs recommend --user {user}")
    return 0


def first_user(store: S3Store, bucket: str, manifest: dict) -> str | None:
    for obj in manifest["objects"]:
        if obj["artifact"] == "recommendations":
            table = read_parquet(store, bucket, obj, columns=["user_id"])
            if table.num_rows:
                return table.column("user_id")[0].as_py()
    return None


def load_recommendations(store: S3Store, bucket: str, manifest: dict, user_id: str):
    import pyarrow as pa
    import pyarrow.compute as pc

    tables = []
    for obj in manifest["objects"]:
        if obj["artifact"] != "recommendations":
            continue
        table = read_parquet(store, bucket, obj, filters=[("user_id", "=", user_id)])
        if table.num_rows:
            tables.append(table)
    if not tables:
        return None
    table = pa.concat_tables(tables)
    return table.take(pc.sort_indices(table, sort_keys=[("rank", "ascending")]))


def printable_name(name) -> str | None:
    """A track or artist name as printed: the ingest rule (``music_recs.names.clean_name``) applied
    again, so publications written before names were cleaned cannot send escape sequences or bidi
    overrides to the terminal."""
    return clean_name(name) if isinstance(name, str) else None


def cmd_recommend(args) -> int:
    cfg = resolve()
    store = _reader()
    pointer, manifest = read_latest(store, cfg.models_bucket, cfg.pointer_key, args.allow_pointer_rewind)
    recs = load_recommendations(store, cfg.models_bucket, manifest, args.user)
    if recs is None:
        print(f"no recommendations for user {args.user!r} in the model of {pointer['day']}", file=sys.stderr)
        return 1
    granularity = manifest["params"]["granularity"]
    print(f"top {min(args.n, recs.num_rows)} {granularity}s for {args.user} (model of {pointer['day']}):")
    print(f"  {rules_line(manifest.get('rules'), manifest['params'].get('top_n'))}")
    for row in recs.slice(0, args.n).to_pylist():
        name = printable_name(row.get("item_name")) or row["item_id"]
        artist = printable_name(row.get("artist_name"))
        by = f" by {artist}" if granularity == "track" and artist else ""
        print(f"  {row['rank']:>3}. {name}{by}  ({row['item_id']}, score {row['score']:.3f})")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="music-recs", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s3 = sub.add_parser("s3", help="local S3 server")
    s3.add_argument("action", choices=["start", "stop", "status"])
    s3.set_defaults(func=cmd_s3)
    seed = sub.add_parser("seed", help="write sample stream logs to the landing prefix")
    seed.add_argument("--end-day", required=True)
    seed.add_argument("--days", type=int, default=3)
    seed.add_argument("--plays", type=int, default=5000, help="plays per day")
    seed.add_argument("--seed", type=int, default=7)
    seed.set_defaults(func=cmd_seed)
    ing = sub.add_parser("ingest", help="ingest and validate a range of days into the lake")
    ing.add_argument("--from-day", required=True)
    ing.add_argument("--to-day", required=True)
    ing.set_defaults(func=cmd_ingest)
    latest = sub.add_parser("latest", help="show the latest published model")
    rec = sub.add_parser("recommend", help="recommendations of the latest model for a user")
    rec.add_argument("--user", required=True)
    rec.add_argument("-n", type=int, default=10)
    for reader, func in ((latest, cmd_latest), (rec, cmd_recommend)):
        reader.add_argument("--allow-pointer-rewind", action="store_true",
                            help="accept a latest.json moved back behind a model that was live (a rollback)")
        reader.set_defaults(func=func)
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except (PublishError, PermanentFailure, ValueError, RuntimeError, AirflowFailException, S3Unreachable) as exc:
        print(f"music-recs: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
