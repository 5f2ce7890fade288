"""The Tableau workbook: Tableau's schema, the generator, and what the schema cannot check.

Tableau does not run here, so these tests read the committed workbook as Tableau would: every
relation must be a view of schema_views.sql, every column a sheet uses must exist in that view
in a real database with a type Tableau reads as declared, every calculation must name fields
that exist (and, run as SQL over the view, give the ratio of sums the raw rows give), and every
dashboard zone and filter must name a sheet and a filter that exist.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import ROOT, SHARED, Database

import db
from lmnh.apps import tableau_workbook
from s3_metadata import Exhibition

WORKBOOK = ROOT / "tableau" / "lmnh_kiosks.twb"
VALIDATOR = SHARED / "tableau" / "validate_twb.py"
USER = "{http://www.tableausoftware.com/xml/user}"
# How Tableau's PostgreSQL connector reads each type: (local-type, remote-type).
TABLEAU_TYPES = {
    "text": ("string", "129"),
    "smallint": ("integer", "2"),
    "integer": ("integer", "3"),
    "bigint": ("integer", "20"),
    "numeric": ("real", "131"),
    "date": ("date", "7"),
    "timestamp without time zone": ("datetime", "135"),
    "timestamp with time zone": ("datetime", "135"),
    "boolean": ("boolean", "11"),
}
BUILT_IN = {"[:Measure Names]", "[Multiple Values]"}
FILTERED = ("local_date", "exhibition_name", "floor", "department")


@pytest.fixture(scope="module")
def workbook() -> ET.Element:
    return ET.parse(WORKBOOK).getroot()


def sources(workbook: ET.Element) -> dict[str, ET.Element]:
    return {ds.get("name"): ds for ds in workbook.iterfind("datasources/datasource")}


def view_of(source: ET.Element) -> str:
    relation = source.find("connection/relation")
    assert relation is not None
    match = re.fullmatch(r"\[public\]\.\[(\w+)\]", relation.get("table", ""))
    assert match, f"{source.get('caption')}: not a [public].[name] relation"
    return match.group(1)


def view_columns(database: Database, view: str) -> dict[str, str]:
    return dict(database.query(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped", (view,)))


def columns(source: ET.Element) -> dict[str, ET.Element]:
    return {c.get("name"): c for c in source.findall("column")}


def referenced(formula: str) -> set[str]:
    return {f"[{name}]" for name in re.findall(r"\[([^\]]+)\]", formula)}


# ------------------------------------------------------------------ the file itself


def test_the_workbook_validates_against_tableaus_schema() -> None:
    if not VALIDATOR.is_file():
        pytest.skip(f"{VALIDATOR} is absent: Tableau's schema and its validator are not here")
    result = subprocess.run([sys.executable, str(VALIDATOR), str(WORKBOOK)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("VALID"), result.stdout
    # Only the one known warning: Tableau writes source-build, the generator claims no build.
    warnings = [line for line in result.stdout.splitlines() if "warning" in line]
    assert all("source-build" in line for line in warnings), warnings


def test_the_committed_workbook_is_what_the_generator_writes_now() -> None:
    assert WORKBOOK.read_bytes() == tableau_workbook.build(tableau_workbook.COMMITTED_SERVER), (
        "tableau/lmnh_kiosks.twb is stale: run `lmnh-tableau-workbook` and commit it")


def test_the_form_is_tableaus_18_1_with_its_feature_manifest(workbook: ET.Element) -> None:
    assert workbook.get("version") == "18.1"
    manifest = [child.tag for child in workbook.find("document-format-change-manifest")]
    assert {"SheetIdentifierTracking", "WindowsPersistSimpleIdentifiers",
            "ObjectModelEncapsulateLegacy"} <= set(manifest)
    assert workbook.find("document-format-change-manifest/ManifestByVersion") is None
    text = WORKBOOK.read_text()
    assert text.startswith("<?xml version='1.0' encoding='utf-8' ?>")


def test_from_settings_points_a_copy_at_the_database_as_the_reader_without_a_password(
        tmp_path: Path) -> None:
    output = tmp_path / "prod.twb"
    env = {**os.environ, "DATABASE_IP": "db.example.internal", "DATABASE_PORT": "6543",
           "DATABASE_NAME": "kiosks", "DATABASE_USERNAME": "lmnh_writer",
           "DATABASE_PASSWORD": "s3cret-never-written"}
    # From an empty folder: no developer's .env is read, the environment alone decides.
    result = subprocess.run([sys.executable, "-m", "lmnh.apps.tableau_workbook",
                             "--from-settings", "-o", str(output)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    text = output.read_text()
    assert "s3cret-never-written" not in text and not re.search(r"\bpassword=", text)
    connections = ET.fromstring(text).findall(".//named-connection/connection")
    assert len(connections) == len(tableau_workbook.DATA_SOURCES)
    for connection in connections:
        assert (connection.get("class"), connection.get("server"), connection.get("port"),
                connection.get("dbname"), connection.get("username"),
                connection.get("sslmode")) == ("postgres", "db.example.internal", "6543",
                                               "kiosks", "lmnh_reader", "require")


# ------------------------------------------------------------------ against the views


def test_every_relation_names_a_view_that_schema_views_creates(
        workbook: ET.Element, database: Database) -> None:
    created = set(re.findall(r"CREATE VIEW (\w+)", db.SCHEMA_FILES[1].read_text()))
    tables = set(re.findall(r"CREATE TABLE (\w+)", (ROOT / "schema.sql").read_text()))
    for source in sources(workbook).values():
        assert source.find("connection").get("class") == "federated"
        view = view_of(source)
        assert view in created and view not in tables, view
        assert database.scalar("SELECT relkind FROM pg_class WHERE oid = %s::regclass",
                               (view,)) == "v"
        # Live, never an extract; every relation in the file is this one view.
        assert source.find("extract") is None
        tables_named = {r.get("table") for r in source.iter("relation")}
        assert tables_named == {f"[public].[{view}]"}


def test_every_column_exists_in_its_view_with_the_type_tableau_reads(
        workbook: ET.Element, database: Database) -> None:
    for source in sources(workbook).values():
        view = view_of(source)
        real = view_columns(database, view)
        records = source.findall("connection/metadata-records/metadata-record[@class='column']")
        assert records, view
        for record in records:
            name = record.findtext("remote-name")
            assert name in real, f"{view}.{name} is not a column of the view"
            assert (record.findtext("local-type"), record.findtext("remote-type")) == \
                TABLEAU_TYPES[real[name]], f"{view}.{name} is {real[name]}"
        declared = {f"[{r.findtext('remote-name')}]": r.findtext("local-type") for r in records}
        for name, column in columns(source).items():
            if column.find("calculation") is None and not name.startswith("[__tableau"):
                assert declared.get(name) == column.get("datatype"), f"{view}.{name}"


def test_every_column_a_worksheet_uses_is_declared_and_exists(
        workbook: ET.Element, database: Database) -> None:
    by_name = sources(workbook)
    for sheet in workbook.iterfind("worksheets/worksheet"):
        view_el = sheet.find("table/view")
        dependencies = view_el.findall("datasource-dependencies")
        assert len(dependencies) == 1, sheet.get("name")
        source = by_name[dependencies[0].get("datasource")]
        real = view_columns(database, view_of(source))
        declared = columns(source)
        needed = {c.get("name"): c for c in dependencies[0].findall("column")}
        for name, column in needed.items():
            assert name in declared, f"{sheet.get('name')}: {name} not in the data source"
            assert column.get("datatype") == declared[name].get("datatype")
            if column.find("calculation") is None:
                assert name.strip("[]") in real, f"{sheet.get('name')}: {name} not in the view"
        instances = {i.get("name"): i for i in dependencies[0].findall("column-instance")}
        for instance in instances.values():
            assert instance.get("column") in needed, instance.get("name")
        prefix = f"[{source.get('name')}]."
        used = [sheet.findtext("table/rows") or "", sheet.findtext("table/cols") or ""]
        used += [e.get("column") for e in sheet.iter() if e.tag in (
            "color", "text", "tooltip", "size", "filter")]
        used += [e.get(a) for e in sheet.iter("computed-sort") for a in ("column", "using")]
        used += [e.text for e in sheet.iterfind("table/view/slices/column")]
        found = set()
        for text in used:
            found |= set(re.findall(re.escape(prefix) + r"(\[[^\]]+\])", text))
            # Nothing on a shelf may come from another data source.
            assert not re.search(r"\[federated\.", text.replace(prefix, "")), text
        assert found, sheet.get("name")
        for ref in found - BUILT_IN:
            assert ref in instances, f"{sheet.get('name')}: {ref} is not a column instance"


def test_every_field_a_calculation_names_exists(workbook: ET.Element) -> None:
    calculations = 0
    for source in sources(workbook).values():
        names = set(columns(source))
        for column in columns(source).values():
            calculation = column.find("calculation")
            if calculation is None:
                continue
            calculations += 1
            formula = calculation.get("formula")
            assert referenced(formula), formula
            assert referenced(formula) <= names, (column.get("caption"), formula)
    assert calculations == 7


# ------------------------------------------------------------------ the numbers are right

EXHIBITIONS = [Exhibition(3, "EXH_03", "Cetacean Sensations", "1", "Zoology",
                          date(2019, 7, 1), "Whales."),
               Exhibition(4, "EXH_04", "Our Polluted World", "3", "Ecology",
                          date(2021, 5, 12), "Pollution.")]


@pytest.fixture
def pressed(database: Database) -> Database:
    """Uneven days and hours, so an average of per-hour or per-day means would be wrong."""
    server = database.server
    conn = db.connect(db.DatabaseSettings(server.host, server.port, database.name, server.user,
                                          server.password, sslmode="disable"))
    db.upsert_exhibitions(conn, EXHIBITIONS)
    values = [(3, 4, "2026-07-13T09:10"), (3, 4, "2026-07-13T09:20"), (3, 4, "2026-07-13T09:30"),
              (3, 0, "2026-07-14T15:00"), (3, 1, "2026-07-19T10:00"), (3, 3, "2026-07-20T10:05"),
              (4, 2, "2026-07-13T11:00"), (4, 3, "2026-07-13T11:40"), (4, 0, "2026-07-26T23:30")]
    ratings = [db.Interaction(site, value, datetime.fromisoformat(at + "+01:00"), "t-rating",
                              0, n) for n, (site, value, at) in enumerate(values)]
    requests = [db.Interaction(3, 1, datetime(2026, 7, 13, 9, tzinfo=UTC), "t-request", 0, 1),
                db.Interaction(4, 0, datetime(2026, 7, 14, 9, tzinfo=UTC), "t-request", 0, 2)]
    rejects = [db.Rejected("invalid_val", datetime(2026, 7, 13, 10, tzinfo=UTC), "t", 0, 0)]
    db.write_interactions(conn, ratings, requests, rejects)
    conn.close()
    return database


def as_sql(formula: str) -> str:
    """A Tableau formula over a view's columns as PostgreSQL (the calculations are plain)."""
    return re.sub(r"\[(\w+)\]", r'"\1"', formula)


def test_each_calculation_run_over_its_view_gives_what_the_raw_rows_give(
        workbook: ET.Element, pressed: Database) -> None:
    expected = {}
    for name, mean, *shares in pressed.query(
            "SELECT exhibition_name, avg(rating_value),"
            + ",".join(f" avg((rating_value = {v})::int)" for v in range(5))
            + " FROM v_rating GROUP BY 1"):
        expected[name] = {"Mean rating": mean, **{
            f"Share {label}": share for label, share in zip(
                ("Terrible", "Bad", "Neutral", "Good", "Amazing"), shares, strict=True)}}
    expected_requests = dict(pressed.query(
        "SELECT exhibition_name, count(*) FROM v_request GROUP BY 1"))
    assert len(expected) == 2 and len(expected_requests) == 2
    checked = 0
    for source in sources(workbook).values():
        view = view_of(source)
        for column in columns(source).values():
            calculation = column.find("calculation")
            if calculation is None:
                continue
            got = dict(pressed.query(f"SELECT exhibition_name, {as_sql(calculation.get('formula'))}"
                                     f" FROM {view} GROUP BY 1"))
            for exhibition, value in got.items():
                want = (expected_requests[exhibition] if view == "v_request"
                        else expected[exhibition][column.get("caption")])
                assert abs(Decimal(value) - Decimal(want)) < Decimal("1e-9"), (
                    view, column.get("caption"), exhibition, value, want)
                checked += 1
    assert checked == 14


def test_the_views_carry_the_parts_of_every_ratio_and_museum_local_keys(
        pressed: Database) -> None:
    for view in ("v_exhibition_daily", "v_exhibition_hourly"):
        real = view_columns(pressed, view)
        assert {name: real[name] for name in ("rating_sum", "n_terrible", "n_bad", "n_neutral",
                                              "n_good", "n_amazing")} == dict.fromkeys(
            ("rating_sum", "n_terrible", "n_bad", "n_neutral", "n_good", "n_amazing"), "bigint")
        assert (real["local_date"], real["local_week"]) == ("date", "date")
        # The parts add up to the ratings, and the ratio columns are still there and right.
        assert pressed.query(
            f"SELECT count(*) FROM {view} WHERE n_terrible + n_bad + n_neutral + n_good"
            f" + n_amazing <> ratings OR rating_sum <> n_bad + 2 * n_neutral + 3 * n_good"
            f" + 4 * n_amazing OR (ratings > 0 AND mean_rating <> round(rating_sum::numeric"
            f" / ratings, 3)) OR extract(isodow FROM local_week) <> 1"
            f" OR local_date - local_week NOT BETWEEN 0 AND 6") == [(0,)]
    assert view_columns(pressed, "v_exhibition_hourly")["local_hour"] == "integer"
    # 2026-07-19 is a Sunday: its rating belongs to the week of Monday 13 July.
    assert pressed.query(
        "SELECT local_week, sum(ratings) FROM v_exhibition_daily"
        " WHERE exhibition_name = 'Cetacean Sensations' GROUP BY 1 ORDER BY 1") == [
        (date(2026, 7, 13), 5), (date(2026, 7, 20), 1)]


# ------------------------------------------------------------------ sheets and dashboards


def test_both_dashboards_show_existing_sheets_and_the_four_filters(workbook: ET.Element) -> None:
    sheets = {s.get("name"): s for s in workbook.iterfind("worksheets/worksheet")}
    boards = {b.get("name"): b for b in workbook.iterfind("dashboards/dashboard")}
    assert set(boards) == {"Exhibitions Manager", "Head of Security"}
    expected_sheets = {
        "Exhibitions Manager": {"Ratings by exhibition", "Mean rating by week",
                                "Rating shares by exhibition", "Ratings by hour of day"},
        "Head of Security": {"Requests by day", "Requests by hour of day", "Requests by floor",
                             "Requests by exhibition", "Latest emergencies"},
    }
    for name, board in boards.items():
        zones = list(board.iter("zone"))
        assert len({z.get("id") for z in zones}) == len(zones), name
        for zone in zones:
            if zone.get("name") is not None:
                assert zone.get("name") in sheets, f"{name}: zone names no sheet"
        shown = {z.get("name") for z in zones if z.get("type-v2") is None}
        assert shown == expected_sheets[name]
        filter_zones = [z for z in zones if z.get("type-v2") == "filter"]
        fields = set()
        for zone in filter_zones:
            sheet = sheets[zone.get("name")]
            assert zone.get("name") in shown
            columns_filtered = {f.get("column"): f for f in sheet.iter("filter")}
            assert zone.get("param") in columns_filtered, (name, zone.get("param"))
            fields.add(re.search(r"\[\w+:(\w+):\w+\]$", zone.get("param")).group(1))
        assert fields == set(FILTERED), name
        # Every sheet on the dashboard shares each filter (same data source, same group).
        for zone in filter_zones:
            groups = set()
            for sheet_name in shown:
                match = [f for f in sheets[sheet_name].iter("filter")
                         if f.get("column") == zone.get("param")]
                assert len(match) == 1, (sheet_name, zone.get("param"))
                groups.add(match[0].get("filter-group"))
            assert len(groups) == 1 and None not in groups, (name, zone.get("param"))
    windows = {w.get("name") for w in workbook.iterfind("windows/window")}
    assert windows == set(sheets) | set(boards)


def test_the_date_filter_is_a_range_and_the_others_start_with_everything(
        workbook: ET.Element) -> None:
    for sheet in workbook.iterfind("worksheets/worksheet"):
        for element in sheet.iter("filter"):
            column = element.get("column")
            if ":local_date:" in column:
                assert (element.get("class"), element.get("included-values")) == (
                    "quantitative", "in-range")
            elif element.get("filter-group") is not None:
                groupfilter = element.find("groupfilter")
                assert groupfilter.get("function") == "level-members"
                assert groupfilter.get(f"{USER}ui-enumeration") == "all"
    emergencies = workbook.find("worksheets/worksheet[@name='Latest emergencies']")
    only = [f for f in emergencies.iter("filter") if ":is_emergency:" in f.get("column")]
    assert [f.find("groupfilter").get("member") for f in only] == ["true"]
    sort = emergencies.find("table/view/computed-sort")
    assert (sort.get("direction"), ":event_at_local:" in sort.get("column")) == ("DESC", True)
    rejects = workbook.find("worksheets/worksheet[@name='Rejected messages by day']")
    assert "v_rejects_daily" in {view_of(s) for n, s in sources(workbook).items()
                                 if n == rejects.find(".//datasource-dependencies")
                                 .get("datasource")}


def test_no_mean_or_share_is_summed_or_averaged_from_a_per_row_ratio(
        workbook: ET.Element) -> None:
    for source in sources(workbook).values():
        for name, column in columns(source).items():
            if re.fullmatch(r"\[(mean_rating|share_\w+)\]", name):
                assert column.get("hidden") == "true", name
    for sheet in workbook.iterfind("worksheets/worksheet"):
        for instance in sheet.iter("column-instance"):
            assert not re.fullmatch(r"\[(mean_rating|share_\w+)\]", instance.get("column")), (
                sheet.get("name"), instance.get("name"))


def test_ratios_have_percent_and_decimal_formats_and_counts_integer_ones(
        workbook: ET.Element) -> None:
    formats = {}
    for source in sources(workbook).values():
        for column in columns(source).values():
            if column.get("caption"):
                formats[column.get("caption")] = column.get("default-format")
    assert formats["Mean rating"] == "n#,##0.00;-#,##0.00"
    assert formats["Share Amazing"] == "p0.0%"
    assert formats["Ratings"] == formats["Requests"] == formats["Rejected messages"] == \
        "n#,##0;-#,##0"
    assert tableau_workbook.READER_ROLE == "lmnh_reader"
