"""Put the pipeline's /healthz into CloudWatch as the metric lmnh_healthz (1 healthy, 0 not).

    python -m lmnh.apps.healthcheck      # once; lmnh-healthcheck.timer runs it every minute

The CloudWatch agent turns /metrics into metrics but cannot read /healthz, which says whether the
consuming loop still turns; deploy/stack.yaml's HealthAlarm fires when this reports 0 or nothing
(an instance or a pipeline gone quiet). Settings, from the environment: METRICS_PORT (9108),
METRICS_ADDRESS (127.0.0.1), and boto3's own (AWS_REGION, AWS_ENDPOINT_URL...).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

from lmnh.services.cloudwatch import METRIC, report_health

TIMEOUT_S = 5


def healthy(address: str, port: int) -> bool:
    """True when /healthz answers 200 within TIMEOUT_S."""
    try:
        with urllib.request.urlopen(f"http://{address}:{port}/healthz", timeout=TIMEOUT_S) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError):  # 503, refused, timed out
        return False


def main() -> int:
    port = int(os.environ.get("METRICS_PORT") or 9108)
    address = os.environ.get("METRICS_ADDRESS") or "127.0.0.1"
    ok = healthy(address, port)
    report_health(ok)
    print(f"{METRIC}={int(ok)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
