"""Writes the Tableau workbook for both stakeholders from the one description below.

    lmnh-tableau-workbook                        # rewrites tableau/lmnh_kiosks.twb
    lmnh-tableau-workbook --from-settings -o lmnh_kiosks_prod.twb

The description (data sources, fields, calculations, worksheets, dashboards) is data in this
file, so the workbook is reviewed as code and regenerated when a view changes. The committed
workbook points at the placeholder host from `.env.example`; `--from-settings` points a copy at
DATABASE_IP, DATABASE_PORT and DATABASE_NAME (the environment, then `.env`). The role is always
the read-only `lmnh_reader` and no password is ever written: Tableau asks for it on opening.

The XML follows what Tableau Desktop itself saves in the `version='18.1'` form (the feature
manifest, a federated data source with a named PostgreSQL connection, metadata records, an
object graph, worksheets with datasource dependencies, shelves and panes, dashboards of zones,
and a window per sheet). Tableau Desktop 2024.1 and newer open it. Names Tableau would pick at
random (data source, connection and calculation ids, simple-ids) are derived from the
description instead, so the same description always gives the same file.
"""

from __future__ import annotations

from lmnh import requires_python  # noqa: F401 - first: an older Python gets one line

# isort: split
import argparse
import hashlib
import sys
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from pathlib import Path

from lmnh.settings import DatabaseEnvironment, read_settings

ROOT = Path(__file__).resolve().parents[2]
WORKBOOK = ROOT / "tableau" / "lmnh_kiosks.twb"
USER_NS = "http://www.tableausoftware.com/xml/user"
READER_ROLE = "lmnh_reader"
# Features Tableau Desktop lists for a workbook of this kind; every one is older than 2024.1.
MANIFEST = ("AnimationOnByDefault", "MarkAnimation", "ObjectModelEncapsulateLegacy",
            "ObjectModelTableType", "SchemaViewerObjectModel", "SheetIdentifierTracking",
            "WindowsPersistSimpleIdentifiers")
INTEGER = "n#,##0;-#,##0"
MEAN = "n#,##0.00;-#,##0.00"
SHARE = "p0.0%"


@dataclass(frozen=True)
class Server:
    """Where the workbook connects: never a user name or password beyond the reader role."""

    host: str
    port: int
    database: str


# The placeholder from .env.example: the committed workbook is the same on every machine.
COMMITTED_SERVER = Server("museum.abc123.eu-west-2.rds.amazonaws.com", 5432, "museum")


# ------------------------------------------------------------------ the description's types


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _tableau_id(*parts: str) -> str:
    """28 lowercase base-36 characters, the shape of the ids Tableau writes."""
    number, chars = int(_digest(*parts), 16), []
    for _ in range(28):
        number, digit = divmod(number, 36)
        chars.append("0123456789abcdefghijklmnopqrstuvwxyz"[digit])
    return "".join(chars)


@dataclass(frozen=True)
class Field:
    """A view column as Tableau sees it. `pg_type` is the view's type (format_type)."""

    name: str
    caption: str
    pg_type: str
    role: str = "dimension"
    kind: str = "nominal"  # Tableau's type: nominal, ordinal or quantitative
    fmt: str | None = None
    hidden: bool = False  # a per-row ratio: summing or averaging it is wrong

    @property
    def datatype(self) -> str:
        return PG_TYPES[self.pg_type][0]


@dataclass(frozen=True)
class Calc:
    """A calculated field; `formula` names fields by their view column names."""

    caption: str
    formula: str
    datatype: str = "real"
    fmt: str = MEAN

    @property
    def name(self) -> str:
        return "Calculation_" + str(int(_digest("calc", self.caption), 16) % 10**18 + 10**18)


@dataclass(frozen=True)
class DataSource:
    view: str
    caption: str
    fields: tuple[Field, ...]
    calcs: tuple[Calc, ...] = ()

    @property
    def name(self) -> str:
        return "federated." + _tableau_id("datasource", self.view)

    @property
    def connection_name(self) -> str:
        return "postgres." + _tableau_id("connection", self.view)

    def column(self, name: str) -> Field | Calc:
        for column in (*self.fields, *self.calcs):
            if column.name == name:
                return column
        raise KeyError(f"{self.view} has no field {name}")

    def calc(self, caption: str) -> Use:
        """The aggregate calculation captioned so, as a measure on a shelf."""
        for calc in self.calcs:
            if calc.caption == caption:
                return Use(calc.name, "User", "quantitative")
        raise KeyError(f"{self.view} has no calculation {caption}")


@dataclass(frozen=True)
class Use:
    """A field on a shelf, card or filter: Tableau's column instance."""

    field: str
    derivation: str = "None"  # None, Sum, Max or User (an aggregate calculation)
    kind: str = "nominal"

    @property
    def instance(self) -> str:
        prefix = {"None": "none", "Sum": "sum", "Max": "max", "User": "usr"}[self.derivation]
        suffix = {"nominal": "nk", "ordinal": "ok", "quantitative": "qk"}[self.kind]
        return f"[{prefix}:{self.field}:{suffix}]"


MEASURE_NAMES = "[:Measure Names]"
MEASURE_VALUES = "[Multiple Values]"


@dataclass(frozen=True)
class Worksheet:
    name: str
    source: DataSource
    rows: tuple[Use | str, ...]
    cols: tuple[Use | str, ...]
    mark: str
    title: str
    color: Use | str | None = None
    label: Use | None = None
    tooltip: tuple[Use, ...] = ()
    nest_rows: bool = False  # rows are nested dimensions (a table), not side-by-side measures
    measure_values: tuple[Use, ...] = ()  # the measures behind Measure Values
    only: tuple[tuple[Use, str], ...] = ()  # (field, member) filters of this sheet alone
    descending: tuple[Use, Use] | None = None  # (dimension, by measure)
    filters: tuple[Use, ...] = ()  # filled in from the dashboard that shows it


@dataclass(frozen=True)
class Dashboard:
    name: str
    title: str
    sheets: tuple[Worksheet, ...]
    filters: tuple[Use, ...]


# ------------------------------------------------------------------ the description

PG_TYPES = {  # PostgreSQL type -> (Tableau datatype, remote-type, default aggregation)
    "text": ("string", 129, "Count"),
    "smallint": ("integer", 2, "Sum"),
    "integer": ("integer", 3, "Sum"),
    "bigint": ("integer", 20, "Sum"),
    "numeric": ("real", 131, "Sum"),
    "date": ("date", 7, "Year"),
    "timestamp without time zone": ("datetime", 135, "Year"),
    "timestamp with time zone": ("datetime", 135, "Year"),
    "boolean": ("boolean", 11, "Count"),
}


RATING_VALUES = ("terrible", "bad", "neutral", "good", "amazing")

EXHIBITION_HOURLY = DataSource(
    view="v_exhibition_hourly",
    caption="Exhibitions by hour",
    fields=(
        Field("exhibition_id", "Exhibition ID", "text"),
        Field("exhibition_name", "Exhibition", "text"),
        Field("floor", "Floor", "text"),
        Field("department", "Department", "text"),
        Field("local_date", "Date (museum time)", "date", kind="ordinal"),
        Field("local_weekday", "Weekday (1 = Monday)", "integer", kind="ordinal"),
        Field("local_hour", "Hour (museum time)", "integer", kind="ordinal"),
        Field("ratings", "Ratings", "bigint", "measure", "quantitative", INTEGER),
        Field("mean_rating", "Mean rating of the hour", "numeric", "measure", "quantitative",
              MEAN, hidden=True),
        *(Field(f"share_{value}", f"Share {value} of the hour", "numeric", "measure",
                "quantitative", SHARE, hidden=True) for value in RATING_VALUES),
        Field("assistance", "Assistance requests", "bigint", "measure", "quantitative", INTEGER),
        Field("emergency", "Emergency requests", "bigint", "measure", "quantitative", INTEGER),
        Field("rating_sum", "Sum of rating values", "bigint", "measure", "quantitative", INTEGER),
        *(Field(f"n_{value}", f"{value.title()} ratings", "bigint", "measure", "quantitative",
                INTEGER) for value in RATING_VALUES),
        Field("local_week", "Week (from Monday, museum time)", "date", kind="ordinal"),
    ),
    calcs=(
        # A ratio of sums over whatever the view holds: never an average of per-hour means.
        Calc("Mean rating", "SUM([rating_sum]) / SUM([ratings])"),
        *(Calc(f"Share {value.title()}", f"SUM([n_{value}]) / SUM([ratings])", fmt=SHARE)
          for value in RATING_VALUES),
    ),
)

REQUESTS = DataSource(
    view="v_request",
    caption="Assistance and emergency requests",
    fields=(
        Field("event_at_utc", "Pressed at (UTC)", "timestamp with time zone", kind="ordinal"),
        Field("event_at_local", "Pressed at (museum time)", "timestamp without time zone",
              kind="ordinal"),
        Field("local_date", "Date (museum time)", "date", kind="ordinal"),
        Field("local_hour", "Hour (museum time)", "integer", kind="ordinal"),
        Field("local_weekday", "Weekday (1 = Monday)", "integer", kind="ordinal"),
        Field("exhibition_id", "Exhibition ID", "text"),
        Field("exhibition_name", "Exhibition", "text"),
        Field("floor", "Floor", "text"),
        Field("department", "Department", "text"),
        Field("request_value", "Request value", "smallint", kind="ordinal"),
        Field("request_description", "Request", "text"),
        Field("is_emergency", "Is emergency", "boolean"),
    ),
    calcs=(Calc("Requests", "COUNT([event_at_utc])", "integer", INTEGER),),
)

REJECTS = DataSource(
    view="v_rejects_daily",
    caption="Rejected messages",
    fields=(
        Field("local_date", "Date (museum time)", "date", kind="ordinal"),
        Field("reason", "Reason", "text"),
        Field("rejected", "Rejected messages", "bigint", "measure", "quantitative", INTEGER),
    ),
)

DATA_SOURCES = (EXHIBITION_HOURLY, REQUESTS, REJECTS)

EXHIBITION = Use("exhibition_name")
DATE_RANGE = Use("local_date", kind="quantitative")
PLACE_FILTERS = (DATE_RANGE, EXHIBITION, Use("floor"), Use("department"))
MEAN_RATING = EXHIBITION_HOURLY.calc("Mean rating")
RATINGS = Use("ratings", "Sum", "quantitative")
REQUEST_COUNT = REQUESTS.calc("Requests")
REQUEST_KIND = Use("request_description")

RATINGS_BY_EXHIBITION = Worksheet(
    "Ratings by exhibition", EXHIBITION_HOURLY,
    rows=(EXHIBITION,), cols=(MEAN_RATING, RATINGS), mark="Bar",
    title="Mean rating (0 Terrible to 4 Amazing) and number of ratings per exhibition",
    tooltip=(MEAN_RATING, RATINGS))
WEEKLY_MEAN = Worksheet(
    "Mean rating by week", EXHIBITION_HOURLY,
    rows=(MEAN_RATING,), cols=(Use("local_week", kind="quantitative"),), mark="Line",
    title="Mean rating per exhibition by week: a falling line is an exhibition slipping",
    color=EXHIBITION, tooltip=(RATINGS,))
SHARES = tuple(EXHIBITION_HOURLY.calc(f"Share {value.title()}") for value in RATING_VALUES)
RATING_SHARES = Worksheet(
    "Rating shares by exhibition", EXHIBITION_HOURLY,
    rows=(EXHIBITION,), cols=(MEASURE_VALUES,), mark="Bar",
    title="Share of each rating value per exhibition", color=MEASURE_NAMES,
    measure_values=SHARES, tooltip=(RATINGS,))
RATINGS_BY_HOUR = Worksheet(
    "Ratings by hour of day", EXHIBITION_HOURLY,
    rows=(RATINGS,), cols=(Use("local_hour", kind="ordinal"),), mark="Bar",
    title="Ratings by hour of day (museum time), coloured by mean rating",
    color=MEAN_RATING)

REQUESTS_BY_DAY = Worksheet(
    "Requests by day", REQUESTS,
    rows=(REQUEST_COUNT,), cols=(DATE_RANGE,), mark="Line",
    title="Assistance and emergency requests per day", color=REQUEST_KIND)
REQUESTS_BY_HOUR = Worksheet(
    "Requests by hour of day", REQUESTS,
    rows=(REQUEST_COUNT,), cols=(Use("local_hour", kind="ordinal"),), mark="Bar",
    title="Requests by hour of day (museum time)", color=REQUEST_KIND)
REQUESTS_BY_FLOOR = Worksheet(
    "Requests by floor", REQUESTS,
    rows=(Use("floor"),), cols=(REQUEST_COUNT,), mark="Bar",
    title="Requests by floor", color=REQUEST_KIND)
REQUESTS_BY_EXHIBITION = Worksheet(
    "Requests by exhibition", REQUESTS,
    rows=(EXHIBITION,), cols=(REQUEST_COUNT,), mark="Bar",
    title="Requests by exhibition", color=REQUEST_KIND)
PRESSED_LOCAL = Use("event_at_local", kind="ordinal")
LATEST_EMERGENCIES = Worksheet(
    "Latest emergencies", REQUESTS,
    rows=(PRESSED_LOCAL, EXHIBITION, Use("floor")), cols=(), mark="Text",
    title="Emergencies, newest first (museum time)", nest_rows=True,
    label=REQUEST_COUNT, only=((Use("is_emergency"), "true"),),
    descending=(PRESSED_LOCAL, Use("event_at_utc", "Max", "quantitative")))

REJECTS_BY_DAY = Worksheet(
    "Rejected messages by day", REJECTS,
    rows=(Use("rejected", "Sum", "quantitative"),), cols=(DATE_RANGE,), mark="Bar",
    title="Data quality: messages the pipeline rejected per day, by reason",
    color=Use("reason"), filters=(DATE_RANGE,))

DASHBOARDS = (
    Dashboard("Exhibitions Manager", "Visitor satisfaction by exhibition",
              (RATINGS_BY_EXHIBITION, WEEKLY_MEAN, RATING_SHARES, RATINGS_BY_HOUR),
              PLACE_FILTERS),
    Dashboard("Head of Security", "Assistance and emergency requests",
              (REQUESTS_BY_DAY, REQUESTS_BY_HOUR, REQUESTS_BY_FLOOR, REQUESTS_BY_EXHIBITION,
               LATEST_EMERGENCIES),
              PLACE_FILTERS),
)


def worksheets() -> tuple[Worksheet, ...]:
    """Every sheet once, each with the filters of the dashboard that shows it."""
    sheets: list[Worksheet] = []
    for board in DASHBOARDS:
        sheets += [replace(sheet, filters=board.filters) for sheet in board.sheets]
    return (*sheets, REJECTS_BY_DAY)


# ------------------------------------------------------------------ writing the XML


def _simple_id(parent: ET.Element, *parts: str) -> None:
    ident = uuid.uuid5(uuid.NAMESPACE_URL, "lmnh-tableau:" + "/".join(parts))
    ET.SubElement(parent, "simple-id", uuid="{" + str(ident).upper() + "}")


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, {k.replace("_", "-"): v for k, v in attrs.items()})
    element.text = text
    return element


def _user(name: str) -> str:
    return f"{{{USER_NS}}}{name}"


def _column(parent: ET.Element, column: Field | Calc) -> None:
    if isinstance(column, Calc):
        element = _sub(parent, "column", caption=column.caption, datatype=column.datatype,
                       default_format=column.fmt, name=f"[{column.name}]", role="measure",
                       type="quantitative")
        _sub(element, "calculation", **{"class": "tableau", "formula": column.formula})
        return
    attrs = {"caption": column.caption, "datatype": column.datatype}
    if column.fmt:
        attrs["default-format"] = column.fmt
    if column.hidden:
        attrs["hidden"] = "true"
    _sub(parent, "column", **attrs, name=f"[{column.name}]", role=column.role, type=column.kind)


def _connection(parent: ET.Element, source: DataSource, server: Server) -> None:
    connection = _sub(parent, "connection", **{"class": "federated"})
    named = _sub(_sub(connection, "named-connections"), "named-connection",
                 caption=server.host, name=source.connection_name)
    _sub(named, "connection", authentication="username-password",
         **{"class": "postgres"}, dbname=server.database, odbc_native_protocol="",
         one_time_sql="", port=str(server.port), server=server.host, sslmode="require",
         username=READER_ROLE)
    _sub(connection, "relation", connection=source.connection_name, name=source.view,
         table=f"[public].[{source.view}]", type="table")
    records = _sub(connection, "metadata-records")
    for ordinal, column in enumerate(source.fields):
        datatype, remote_type, aggregation = PG_TYPES[column.pg_type]
        record = _sub(records, "metadata-record", **{"class": "column"})
        _sub(record, "remote-name", column.name)
        _sub(record, "remote-type", str(remote_type))
        _sub(record, "local-name", f"[{column.name}]")
        _sub(record, "parent-name", f"[{source.view}]")
        _sub(record, "remote-alias", column.name)
        _sub(record, "ordinal", str(ordinal))
        _sub(record, "local-type", datatype)
        _sub(record, "aggregation", aggregation)
        _sub(record, "contains-null", "true")
        _sub(record, "object-id", f"[{_object_id(source)}]")


def _object_id(source: DataSource) -> str:
    return f"{source.view}_{_digest('object', source.view)[:32].upper()}"


def _datasource(parent: ET.Element, source: DataSource, server: Server) -> None:
    element = _sub(parent, "datasource", caption=source.caption, inline="true",
                   name=source.name, version="18.1")
    _connection(element, source, server)
    _sub(element, "aliases", enabled="yes")
    for column in sorted((*source.fields, *source.calcs), key=lambda c: c.name):
        _column(element, column)
    _sub(element, "column", caption=source.view, datatype="table",
         name=f"[__tableau_internal_object_id__].[{_object_id(source)}]", role="measure",
         type="quantitative")
    _sub(element, "layout", dim_ordering="alphabetic", measure_ordering="alphabetic",
         show_structure="true")
    semantic = _sub(element, "semantic-values")
    _sub(semantic, "semantic-value", key="[Country].[Name]", value='"United Kingdom"')
    graph = _sub(_sub(element, "object-graph"), "objects")
    obj = _sub(graph, "object", caption=source.view, id=_object_id(source))
    _sub(_sub(obj, "properties", context=""), "relation", connection=source.connection_name,
         name=source.view, table=f"[public].[{source.view}]", type="table")


def _uses(sheet: Worksheet) -> list[Use]:
    """Every column instance the sheet needs, once, in a stable order."""
    found: dict[str, Use] = {}
    candidates = [*sheet.rows, *sheet.cols, sheet.color, sheet.label, *sheet.tooltip,
                  *sheet.measure_values, *sheet.filters, *(use for use, _ in sheet.only),
                  *(sheet.descending or ())]
    for use in candidates:
        if isinstance(use, Use):
            found.setdefault(use.instance, use)
    return [found[key] for key in sorted(found)]


def _ref(sheet: Worksheet, use: Use | str) -> str:
    return f"[{sheet.source.name}].{use.instance if isinstance(use, Use) else use}"


def _shelf(sheet: Worksheet, uses: tuple[Use | str, ...], nest: bool) -> str | None:
    """Tableau's shelf syntax: `a / b` nests, `a + b` sets side by side, right-associative."""
    refs = [_ref(sheet, use) for use in uses]
    if not refs:
        return None
    text = refs[-1]
    for ref in reversed(refs[:-1]):
        text = f"({ref} {'/' if nest else '+'} {text})"
    return text


def _filters(view: ET.Element, sheet: Worksheet, groups: dict[str, int]) -> None:
    for use in sheet.filters:
        column = _ref(sheet, use)
        group = str(groups[column])
        if use.kind == "quantitative":
            _sub(view, "filter", **{"class": "quantitative"}, column=column, filter_group=group,
                 included_values="in-range")
            continue
        element = _sub(view, "filter", **{"class": "categorical"}, column=column,
                       filter_group=group)
        _sub(element, "groupfilter", function="level-members", level=use.instance,
             **{_user("ui-enumeration"): "all", _user("ui-marker"): "enumerate"})
    for use, member in sheet.only:
        element = _sub(view, "filter", **{"class": "categorical"}, column=_ref(sheet, use))
        _sub(element, "groupfilter", function="member", level=use.instance, member=member,
             **{_user("ui-domain"): "database", _user("ui-enumeration"): "inclusive",
                _user("ui-marker"): "enumerate"})
    if sheet.measure_values:
        element = _sub(view, "filter", **{"class": "categorical"},
                       column=_ref(sheet, MEASURE_NAMES))
        union = _sub(element, "groupfilter", function="union", **{_user("op"): "manual"})
        for use in sheet.measure_values:
            _sub(union, "groupfilter", function="member", level=MEASURE_NAMES,
                 member=f'"{_ref(sheet, use)}"')
    if sheet.descending:
        dimension, measure = sheet.descending
        _sub(view, "computed-sort", column=_ref(sheet, dimension), direction="DESC",
             using=_ref(sheet, measure))
    # Slices: the filtered fields that are on no shelf or card of the sheet.
    shown = {_ref(sheet, use) for use in (*sheet.rows, *sheet.cols, sheet.color, sheet.label)
             if use is not None}
    sliced = [_ref(sheet, use) for use in (*sheet.filters, *(use for use, _ in sheet.only))
              if _ref(sheet, use) not in shown]
    if sliced:
        slices = _sub(view, "slices")
        for ref in sliced:
            _sub(slices, "column", ref)


def _pane(panes: ET.Element, sheet: Worksheet, axis: Use | None, pane_id: int) -> None:
    attrs = {"selection-relaxation-option": "selection-relaxation-allow"}
    if axis is not None:
        attrs = {"id": str(pane_id), **attrs, "x-axis-name": _ref(sheet, axis)}
    pane = _sub(panes, "pane", **attrs)
    _sub(_sub(pane, "view"), "breakdown", value="auto")
    _sub(pane, "mark", **{"class": sheet.mark})
    encodings = ET.Element("encodings")
    if sheet.color is not None:
        _sub(encodings, "color", column=_ref(sheet, sheet.color))
    label = axis or sheet.label
    if label is not None:
        _sub(encodings, "text", column=_ref(sheet, label))
    for use in sheet.tooltip:
        _sub(encodings, "tooltip", column=_ref(sheet, use))
    if len(encodings):
        pane.append(encodings)
    if label is not None:
        rule = _sub(_sub(pane, "style"), "style-rule", element="mark")
        _sub(rule, "format", attr="mark-labels-show", value="true")


def _worksheet(parent: ET.Element, sheet: Worksheet, groups: dict[str, int]) -> None:
    element = _sub(parent, "worksheet", name=sheet.name)
    layout = _sub(_sub(element, "layout-options"), "title")
    run = _sub(_sub(layout, "formatted-text"), "run", sheet.title)
    run.set("bold", "true")
    table = _sub(element, "table")
    view = _sub(table, "view")
    _sub(_sub(view, "datasources"), "datasource", caption=sheet.source.caption,
         name=sheet.source.name)
    dependencies = _sub(view, "datasource-dependencies", datasource=sheet.source.name)
    uses = _uses(sheet)
    for name in sorted({use.field for use in uses}):
        _column(dependencies, sheet.source.column(name))
    for use in uses:
        _sub(dependencies, "column-instance", column=f"[{use.field}]",
             derivation=use.derivation, name=use.instance, pivot="key", type=use.kind)
    _filters(view, sheet, groups)
    _sub(view, "aggregation", value="true")
    _sub(table, "style")
    panes = _sub(table, "panes")
    measures = [use for use in sheet.cols if isinstance(use, Use) and use.kind == "quantitative"
                and sheet.rows and not any(isinstance(r, Use) and r.kind == "quantitative"
                                           for r in sheet.rows)]
    _pane(panes, sheet, None, 0)
    if len(measures) > 1:  # one pane per measure set side by side, each labelled
        for pane_id, measure in enumerate(measures, start=1):
            _pane(panes, sheet, measure, pane_id)
    _sub(table, "rows", _shelf(sheet, sheet.rows, sheet.nest_rows))
    _sub(table, "cols", _shelf(sheet, sheet.cols, nest=False))
    _simple_id(element, "worksheet", sheet.name)


ZONE = 100_000  # Tableau lays zones out on a 100,000 x 100,000 grid


def _zone(parent: ET.Element, ids: list[int], x: int, y: int, w: int, h: int,
          **attrs: str) -> ET.Element:
    ids.append(len(ids) + 1)
    return _sub(parent, "zone", h=str(h), id=str(ids[-1]), **attrs, w=str(w), x=str(x),
                y=str(y))


def _dashboard(parent: ET.Element, board: Dashboard, sheets: dict[str, Worksheet]) -> None:
    element = _sub(parent, "dashboard", name=board.name)
    title = _sub(_sub(element, "layout-options"), "title")
    run = _sub(_sub(title, "formatted-text"), "run", board.title)
    run.set("bold", "true")
    run.set("fontsize", "16")
    _sub(element, "style")
    _sub(element, "size", maxheight="1000", maxwidth="1600", minheight="800", minwidth="1200",
         sizing_mode="range")
    # Tiled, as Tableau lays out a new dashboard: the title and the sheets two by two on the
    # left (the last sheet of an odd count takes the whole row), the filters down the right.
    zones, ids = _sub(element, "zones"), []
    root = _zone(zones, ids, 0, 0, ZONE, ZONE, type_v2="layout-basic")
    grid_w, title_h = ZONE - 18_000, 6_000
    across = _zone(root, ids, 0, 0, ZONE, ZONE, param="horz", type_v2="layout-flow")
    left = _zone(across, ids, 0, 0, grid_w, ZONE, param="vert", type_v2="layout-flow")
    _zone(left, ids, 0, 0, grid_w, title_h, type_v2="title")
    pairs = [board.sheets[i:i + 2] for i in range(0, len(board.sheets), 2)]
    row_h = (ZONE - title_h) // len(pairs)
    for number, pair in enumerate(pairs):
        y = title_h + number * row_h
        row = _zone(left, ids, 0, y, grid_w, row_h, param="horz", type_v2="layout-flow")
        for index, sheet in enumerate(pair):
            width = grid_w // len(pair)
            _zone(row, ids, index * width, y, width, row_h, name=sheet.name)
    side = _zone(across, ids, grid_w, 0, ZONE - grid_w, ZONE, param="vert",
                 type_v2="layout-flow")
    anchor = sheets[board.sheets[0].name]
    filter_h = ZONE // len(board.filters)
    for index, use in enumerate(board.filters):
        mode = "slider" if use.kind == "quantitative" else "checkdropdown"
        _zone(side, ids, grid_w, index * filter_h, ZONE - grid_w, filter_h, mode=mode,
              name=anchor.name, param=_ref(anchor, use), type_v2="filter", values="database")
    _simple_id(element, "dashboard", board.name)


def _windows(parent: ET.Element, sheets: tuple[Worksheet, ...]) -> None:
    windows = _sub(parent, "windows", source_height="30")
    for board in DASHBOARDS:
        window = _sub(windows, "window", **{"class": "dashboard"}, maximized="true",
                      name=board.name)
        viewpoints = _sub(window, "viewpoints")
        for sheet in sorted(board.sheets, key=lambda s: s.name):
            _sub(_sub(viewpoints, "viewpoint", name=sheet.name), "zoom", type="entire-view")
        _sub(window, "active", id="-1")
        _simple_id(window, "window", board.name)
    for sheet in sheets:
        window = _sub(windows, "window", **{"class": "worksheet"}, name=sheet.name)
        cards = _sub(window, "cards")
        left = _sub(_sub(cards, "edge", name="left"), "strip", size="160")
        for card in ("pages", "filters", "marks"):
            _sub(left, "card", type=card)
        top = _sub(cards, "edge", name="top")
        for card in ("columns", "rows", "title"):
            _sub(_sub(top, "strip", size="31"), "card", type=card)
        _simple_id(window, "window", sheet.name)


def build(server: Server) -> bytes:
    """The whole workbook, as bytes: the same description and server give the same bytes."""
    workbook = ET.Element("workbook", {"original-version": "18.1", "version": "18.1"})
    manifest = _sub(workbook, "document-format-change-manifest")
    for feature in MANIFEST:
        _sub(manifest, feature)
    preferences = _sub(workbook, "preferences")
    _sub(preferences, "preference", name="ui.encoding.shelf.height", value="24")
    _sub(preferences, "preference", name="ui.shelf.height", value="26")
    datasources = _sub(workbook, "datasources")
    for source in DATA_SOURCES:
        _datasource(datasources, source, server)
    sheets = worksheets()
    groups: dict[str, int] = {}
    for sheet in sheets:
        for use in sheet.filters:
            # One group per data source and field: the filter applies to every sheet in it.
            groups.setdefault(_ref(sheet, use), len(groups) + 2)
    sheets_xml = _sub(workbook, "worksheets")
    for sheet in sheets:
        _worksheet(sheets_xml, sheet, groups)
    boards = _sub(workbook, "dashboards")
    by_name = {sheet.name: sheet for sheet in sheets}
    for board in DASHBOARDS:
        _dashboard(boards, board, by_name)
    _windows(workbook, sheets)
    lines = ["<?xml version='1.0' encoding='utf-8' ?>", ""]
    _write(workbook, 0, lines)
    return ("\n".join(lines) + "\n").encode()


def _qualified(name: str) -> str:
    return name.replace(f"{{{USER_NS}}}", "user:")


def _escape(text: str, *, attribute: bool = False) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if attribute:
        text = text.replace("'", "&apos;").replace('"', "&quot;").replace("\n", "&#10;")
    return text


def _write(element: ET.Element, depth: int, lines: list[str]) -> None:
    """Tableau's own layout: two-space indent, single quotes, attributes in name order."""
    pad, tag = "  " * depth, _qualified(element.tag)
    attributes = sorted((_qualified(k), v) for k, v in element.attrib.items())
    if depth == 0:
        attributes.append(("xmlns:user", USER_NS))
    opening = tag + "".join(f" {k}='{_escape(v, attribute=True)}'" for k, v in attributes)
    if len(element):
        lines.append(f"{pad}<{opening}>")
        for child in element:
            _write(child, depth + 1, lines)
        lines.append(f"{pad}</{tag}>")
    elif element.text is None:
        lines.append(f"{pad}<{opening} />")
    else:
        lines.append(f"{pad}<{opening}>{_escape(element.text)}</{tag}>")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, default=WORKBOOK,
                        help=f"where to write (default {WORKBOOK.relative_to(ROOT)})")
    parser.add_argument("--from-settings", action="store_true",
                        help="connect to DATABASE_IP/PORT/NAME (environment, then .env) "
                             "instead of the placeholder host")
    args = parser.parse_args(argv)
    server = COMMITTED_SERVER
    if args.from_settings:
        env = read_settings(DatabaseEnvironment)
        server = Server(env.DATABASE_IP, env.DATABASE_PORT, env.DATABASE_NAME)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(build(server))
    print(f"wrote {args.output} for {server.host}:{server.port}/{server.database} "
          f"as {READER_ROLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
