"""Exhibition metadata from the museum's S3 bucket.

Only keys named `lmnh_exhibition_<name>.json` are exhibition files; everything else in the
bucket (the bare `lmnh_exhibition`, `.txt` copies, another museum's `lms_*` files, images,
CSV exports) is ignored. The client comes from boto3's standard credential and endpoint chain
(AWS_PROFILE, AWS_ACCESS_KEY_ID, AWS_REGION, AWS_ENDPOINT_URL, ...).

Whatever a file holds, it cannot stop the pipeline: a file that is malformed or cannot be read
is skipped with a warning naming it (on a refresh, the exhibition last loaded from it is kept),
and an exhibition the database could not hold (a number beyond its SMALLINT key, a NUL or an
unpaired surrogate in a text, a name too long for a unique index) is skipped the same way.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from datetime import date, datetime
from typing import Any

import boto3
import botocore.exceptions
from botocore.config import Config as BotoConfig

from lmnh.core.errors import one_line

log = logging.getLogger("s3_metadata")

EXHIBITION_PREFIX = "lmnh_exhibition_"
EXHIBITION_KEY = re.compile(EXHIBITION_PREFIX + r"[^/]+\.json")
EXHIBITION_ID = re.compile(r"EXH_([0-9]{2,6})")
FIELDS = ("EXHIBITION_NAME", "EXHIBITION_ID", "FLOOR", "DEPARTMENT", "START_DATE", "DESCRIPTION")
MAX_NUMBER = 32_767  # exhibition_id is a SMALLINT
MAX_KEYED_TEXT = 500  # public id, floor, department: unique-indexed (an entry holds ~2,700 bytes)


class MetadataError(Exception):
    """The bucket does not yield a usable set of exhibitions."""


# What a failed read of the bucket raises: no usable files, or S3 unreachable or refusing.
S3_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)
METADATA_ERRORS = (MetadataError, *S3_ERRORS)


def s3_client() -> Any:
    """boto3's standard chain; its standard retry mode covers passing faults."""
    return boto3.client("s3", config=BotoConfig(
        retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=60))


@dataclass(frozen=True, slots=True)
class Exhibition:
    """One exhibition; kiosk site "N" belongs to the exhibition whose `number` is N."""

    number: int
    public_id: str
    name: str
    floor: str
    department: str
    start_date: date
    description: str
    source_key: str = dataclass_field(default="", compare=False)  # the file it came from, if any


def is_exhibition_key(key: str) -> bool:
    return EXHIBITION_KEY.fullmatch(key) is not None


def parse_exhibition(body: bytes) -> Exhibition:
    """One metadata file's content; raises ValueError saying what is wrong with it."""
    try:
        doc: Any = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"not UTF-8 JSON ({error})") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    for field in FIELDS:
        if not isinstance(doc.get(field), str) or not doc[field].strip():
            raise ValueError(f"{field} is missing or not a non-empty string")
    id_match = EXHIBITION_ID.fullmatch(doc["EXHIBITION_ID"])
    if id_match is None:
        raise ValueError(f"EXHIBITION_ID {doc['EXHIBITION_ID']!r} is not like EXH_00")
    try:
        start_date = datetime.strptime(doc["START_DATE"], "%d/%m/%y").date()
    except ValueError:
        raise ValueError(f"START_DATE {doc['START_DATE']!r} is not DD/MM/YY") from None
    if int(id_match.group(1)) > MAX_NUMBER:
        raise ValueError(f"EXHIBITION_ID {doc['EXHIBITION_ID']!r} is beyond EXH_{MAX_NUMBER}")
    for name in FIELDS:
        text = doc[name]
        if "\x00" in text:
            raise ValueError(f"{name} holds a NUL character")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{name} holds an unpaired surrogate") from None
        if name in ("EXHIBITION_ID", "FLOOR", "DEPARTMENT") and len(text) > MAX_KEYED_TEXT:
            raise ValueError(f"{name} is longer than {MAX_KEYED_TEXT} characters")
    return Exhibition(
        number=int(id_match.group(1)),
        public_id=doc["EXHIBITION_ID"],
        name=doc["EXHIBITION_NAME"].strip(),
        floor=doc["FLOOR"].strip(),
        department=doc["DEPARTMENT"].strip(),
        start_date=start_date,
        description=doc["DESCRIPTION"].strip(),
    )


def exhibitions_from_files(files: dict[str, bytes | None],
                           loaded: dict[int, Exhibition] | None = None) -> dict[int, Exhibition]:
    """Parse exhibition files by key (None: a file that could not be read); skip malformed
    ones with a warning, keeping what was `loaded` from that file before; refuse clashes."""
    last_from = {e.source_key: e for e in (loaded or {}).values() if e.source_key}
    exhibitions: dict[int, Exhibition] = {}
    claimed_by: dict[int, str] = {}
    for key, body in sorted(files.items()):
        try:
            if body is None:
                raise ValueError("it could not be read")
            exhibition = parse_exhibition(body)
        except ValueError as error:
            kept = last_from.get(key)
            if kept is None:
                log.warning("skipping s3 object %s: %s", key, error)
                continue
            log.warning("s3 object %s is unusable (%s); keeping %s as last loaded", key, error,
                        kept.public_id)
            exhibition = kept
        if exhibition.number in exhibitions:
            raise MetadataError(
                f"{key} and {claimed_by[exhibition.number]} both claim {exhibition.public_id}"
            )
        previous = (loaded or {}).get(exhibition.number)
        if previous is not None and (previous.name, previous.department) != (
                exhibition.name, exhibition.department):
            log.warning("%s reused: %s now names %r (%s), last loaded as %r (%s)",
                        exhibition.public_id, key, exhibition.name, exhibition.department,
                        previous.name, previous.department)
        exhibitions[exhibition.number] = replace(exhibition, source_key=key)
        claimed_by[exhibition.number] = key
    if not exhibitions:
        raise MetadataError("no valid lmnh_exhibition_*.json file in the bucket")
    return exhibitions


def load_exhibitions(s3_client: Any, bucket: str,
                     loaded: dict[int, Exhibition] | None = None) -> dict[int, Exhibition]:
    """List every page of the bucket's exhibition keys, read the files, return them by number.

    Only keys under EXHIBITION_PREFIX are listed, so an instance role may allow s3:ListBucket for
    that prefix alone (deploy/stack.yaml).

    A file that cannot be read (gone since the listing, access denied) counts as malformed;
    S3 itself unreachable fails the whole load.
    """
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                 Prefix=EXHIBITION_PREFIX)
    keys = [
        item["Key"]
        for page in pages
        for item in page.get("Contents", ())
        if is_exhibition_key(item["Key"])
    ]
    files: dict[str, bytes | None] = {}
    for key in keys:
        try:
            files[key] = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except botocore.exceptions.ClientError as error:
            log.warning("cannot read s3 object %s: %s", key, one_line(error))
            files[key] = None
    return exhibitions_from_files(files, loaded)
