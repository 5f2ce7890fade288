"""CloudWatch: the daemon's liveness as the metric lmnh_healthz, for the stack's HealthAlarm."""

from __future__ import annotations

from typing import Any

import boto3

NAMESPACE = "LMNH/Pipeline"
METRIC = "lmnh_healthz"
DIMENSIONS = [{"Name": "job", "Value": "lmnh-pipeline"}]


def report_health(healthy: bool, cloudwatch: Any = None) -> None:
    """Put 1 (healthy) or 0 into lmnh_healthz."""
    cloudwatch = cloudwatch or boto3.client("cloudwatch")
    cloudwatch.put_metric_data(Namespace=NAMESPACE, MetricData=[
        {"MetricName": METRIC, "Dimensions": DIMENSIONS, "Value": 1.0 if healthy else 0.0,
         "Unit": "Count"}])
