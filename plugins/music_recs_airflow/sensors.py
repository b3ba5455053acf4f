"""Waiting for the day's stream logs in the landing prefix."""

from __future__ import annotations

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowSensorTimeout

from music_recs.plan import RunPlan
from music_recs_airflow.s3 import S3Store
from music_recs_airflow.tasks import landing_files


class LandingPartitionSensor(BaseSensorOperator):
    """Done when ``s3://<raw bucket>/<landing prefix>/dt=D/`` holds at least one file.

    D and the settings are the run plan's (the XCom of ``plan_task_id``, default ``plan_run``):
    resolved once for the run, never again here. When the sensor times out, the error names
    the prefix that stayed empty, so the person on call knows which feed to chase; nothing
    downstream runs, so nothing is published for that day.
    """

    def __init__(self, *, plan_task_id: str = "plan_run", **kwargs):
        super().__init__(**kwargs)
        self.plan_task_id = plan_task_id

    def _landing(self, context) -> tuple[S3Store, object, str]:
        plan = RunPlan.from_dict(context["ti"].xcom_pull(task_ids=self.plan_task_id))
        return S3Store.from_airflow(plan.settings.aws_conn_id), plan.settings, plan.day

    def poke(self, context) -> bool:
        store, cfg, day = self._landing(context)
        files = landing_files(store, cfg, day)
        if not files:
            self.log.info("no stream logs yet under s3://%s/%s", cfg.raw_bucket, cfg.landing_key_prefix(day))
        return bool(files)

    def execute(self, context):
        try:
            return super().execute(context)
        except AirflowSensorTimeout as exc:
            _, cfg, day = self._landing(context)
            raise AirflowSensorTimeout(
                f"no stream logs arrived under s3://{cfg.raw_bucket}/{cfg.landing_key_prefix(day)} within "
                f"{self.timeout:.0f}s; nothing was ingested or published for dt={day}"
            ) from exc
