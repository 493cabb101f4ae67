"""(c) Model Monitor as the SDK drives it: an endpoint deployed with data capture to s3://, traffic,
``DefaultModelMonitor.suggest_baseline`` with its defaults (wait=True, logs=True: a processing job
with SageMaker's analyzer image, its logs tailed), a one-off (``NOW``) monitoring schedule over the
captured hour, then ``list_executions``, ``latest_monitoring_statistics`` and
``latest_monitoring_constraint_violations`` (DescribeProcessingJob on each execution's
ProcessingJobArn, then the files read from S3)."""

from __future__ import annotations

from typing import Any

from _harness import run, wait_for
from _models import rows_csv, session, sklearn_model, upload_model
from sagemaker.model_monitor import CronExpressionGenerator, DataCaptureConfig, DefaultModelMonitor
from sagemaker.model_monitor.dataset_format import DatasetFormat
from sagemaker.s3 import S3Downloader
from sagemaker.serializers import CSVSerializer

TERMINAL = {"Completed", "CompletedWithViolations", "Failed", "Stopped"}


def captured_records(capture_uri: str, sess: Any) -> int:
    return sum(len(S3Downloader.read_file(uri, sagemaker_session=sess).splitlines())
               for uri in S3Downloader.list(capture_uri, sagemaker_session=sess))


def main(params: dict[str, Any]) -> dict[str, Any]:
    sess = session()
    bucket, prefix = sess.default_bucket(), params["prefix"]
    capture_uri = f"s3://{bucket}/{prefix}/capture"
    model = sklearn_model(sess, params, upload_model(sess, params))
    predictor = model.deploy(
        instance_type="ml.m5.large", initial_instance_count=1, endpoint_name=params["endpoint_name"],
        serializer=CSVSerializer(),
        data_capture_config=DataCaptureConfig(enable_capture=True, sampling_percentage=100,
                                              destination_s3_uri=capture_uri),
    )
    monitor = DefaultModelMonitor(role=params["role"], instance_count=1, instance_type="ml.m5.xlarge",
                                  volume_size_in_gb=20, max_runtime_in_seconds=600, sagemaker_session=sess)
    try:
        traffic = params["traffic"]
        per_request = params["rows_per_request"]
        for start in range(0, len(traffic), per_request):
            predictor.predict(rows_csv(traffic[start:start + per_request]))
        requests = -(-len(traffic) // per_request)

        # The baseline: the dataset (with a header) uploaded by the SDK, analysed by a processing job.
        baseline_job = monitor.suggest_baseline(
            baseline_dataset=params["baseline_csv"], dataset_format=DatasetFormat.csv(header=True),
            output_s3_uri=f"s3://{bucket}/{prefix}/baseline", job_name=params["baseline_job"],
        )
        baseline_description = baseline_job.describe()
        baseline_statistics = monitor.baseline_statistics().body_dict
        suggested_constraints = monitor.suggested_constraints().body_dict

        # Capture is written within a second of each invocation; the schedule's window must see it all.
        wait_for(lambda: captured_records(capture_uri, sess) >= requests, 60, "capture files in S3")
        monitor.create_monitoring_schedule(
            monitor_schedule_name=params["schedule_name"], endpoint_input=predictor.endpoint_name,
            output_s3_uri=f"s3://{bucket}/{prefix}/reports",
            statistics=monitor.baseline_statistics(), constraints=monitor.suggested_constraints(),
            schedule_cron_expression=CronExpressionGenerator.now(),
            data_analysis_start_time="-PT1H", data_analysis_end_time="-PT0H",
        )
        summaries = wait_for(
            lambda: [s for s in sess.sagemaker_client.list_monitoring_executions(
                MonitoringScheduleName=params["schedule_name"])["MonitoringExecutionSummaries"]
                if s["MonitoringExecutionStatus"] in TERMINAL],
            120, "a finished monitoring execution", interval=1.0)
        executions = monitor.list_executions()
        latest = executions[-1].describe()
        statistics = monitor.latest_monitoring_statistics()
        violations = monitor.latest_monitoring_constraint_violations()
    finally:
        try:
            monitor.delete_monitoring_schedule()
        finally:
            predictor.delete_model()  # first: it finds the models through the endpoint config
            predictor.delete_endpoint()
    return {
        "baseline_job": {k: baseline_description.get(k) for k in ("ProcessingJobStatus", "AppSpecification",
                                                                   "ProcessingOutputConfig", "ExitMessage")},
        "baseline_statistics": baseline_statistics,
        "suggested_constraints": suggested_constraints,
        "execution_summary": summaries[0],
        "executions": len(executions),
        "latest_processing_job": {k: latest.get(k) for k in ("ProcessingJobStatus", "ExitMessage",
                                                             "ProcessingOutputConfig", "ProcessingJobArn")},
        "statistics": statistics.body_dict if statistics is not None else None,
        "violations": violations.body_dict if violations is not None else None,
    }


run(main)
