"""Emergency alerts for the Head of Security: one SNS message per newly stored emergency press.

The pipeline hands over only the emergencies its transaction newly inserted, so a replayed
message never alerts twice. Publishing runs on a worker thread with boto3's standard retries:
a slow or failing SNS is logged and never holds up or loses the data.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import tzinfo
from typing import NamedTuple

import boto3
import botocore.exceptions
from botocore.config import Config as BotoConfig

from db import Interaction
from s3_metadata import Exhibition

log = logging.getLogger("alerts")


class Alert(NamedTuple):
    subject: str
    message: str


def emergency_alert(press: Interaction, exhibition: Exhibition | None, museum_tz: tzinfo) -> Alert:
    """The words the Head of Security reads: where, which floor, when in museum time."""
    local = press.event_at.astimezone(museum_tz)
    if exhibition is None:
        where, floor = f"site {press.exhibition_id}", "unknown floor"
    else:
        where, floor = f"{exhibition.public_id} {exhibition.name}", f"floor {exhibition.floor}"
    return Alert(
        subject=f"EMERGENCY at {where}"[:100],
        message=(f"Emergency button pressed at {where}, {floor}, at {local:%H:%M:%S} on "
                 f"{local:%d/%m/%Y} museum time."),
    )


class EmergencyAlerts:
    """Publishes alerts to `topic_arn`, or does nothing when no topic is configured."""

    def __init__(self, topic_arn: str | None, exhibitions: Mapping[int, Exhibition],
                 museum_tz: tzinfo) -> None:
        self.topic_arn = topic_arn
        self.exhibitions = exhibitions
        self.museum_tz = museum_tz
        self.executor: ThreadPoolExecutor | None = None
        if topic_arn:
            self.client = boto3.client("sns", config=BotoConfig(
                retries={"mode": "standard", "max_attempts": 5}, connect_timeout=3,
                read_timeout=5))
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alerts")

    def send(self, emergencies: Sequence[Interaction]) -> None:
        if self.executor is None:
            return
        for press in emergencies:
            alert = emergency_alert(press, self.exhibitions.get(press.exhibition_id),
                                    self.museum_tz)
            self.executor.submit(self._publish, alert)

    def _publish(self, alert: Alert) -> None:
        try:
            self.client.publish(TopicArn=self.topic_arn, Subject=alert.subject,
                                Message=alert.message)
            log.info("alert sent: %s", alert.subject)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            log.error("alert NOT sent after retries (%s): %s", " ".join(str(error).split()),
                      alert.message)

    def close(self) -> None:
        """Wait for the alerts in hand, so a clean stop loses none."""
        if self.executor is not None:
            self.executor.shutdown(wait=True)
