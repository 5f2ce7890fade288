"""The layout shows the architecture, and the code keeps to it (issue 21, "The structure").

- no class over 200 lines;
- no production module knows two services: it imports at most one client library among
  confluent-kafka (Kafka), psycopg2 (PostgreSQL) and boto3's clients (one AWS service each);
- the core (lmnh/core/, validation.py) imports no service library and nothing of the shell;
- the entry points import only the core, the service modules and the settings: no client library
  of their own, and never another entry point.
"""

from __future__ import annotations

import ast
import re

import pytest
from conftest import ROOT

MAX_CLASS_LINES = 200
# The client libraries that speak to an outside service, by the service they speak to.
CLIENT_LIBRARIES = {"confluent_kafka": "Kafka", "psycopg2": "PostgreSQL"}
AWS_LIBRARIES = ("boto3", "botocore")
ENTRY_POINTS = ("pipeline.py", *(f"lmnh/apps/{p.name}" for p in (ROOT / "lmnh/apps").glob("*.py")
                                 if p.name not in ("__init__.py", "dashboard_auth.py")))
PRODUCTION = ("pipeline.py", "validation.py", "db.py", "s3_metadata.py",
              *(str(p.relative_to(ROOT)) for folder in ("core", "services", "apps")
                for p in (ROOT / "lmnh" / folder).glob("*.py")), "lmnh/settings.py")
SOURCES = sorted({str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
                  if not {".venv", ".local", ".git"} & set(p.relative_to(ROOT).parts)})


def imported(path: str) -> set[str]:
    """Every module the file imports, by its full dotted name (and each `from x import y` as
    both x and x.y)."""
    tree = ast.parse((ROOT / path).read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def services_known(path: str) -> set[str]:
    names = imported(path)
    known = {service for library, service in CLIENT_LIBRARIES.items()
             if any(n == library or n.startswith(f"{library}.") for n in names)}
    if any(n.split(".")[0] in AWS_LIBRARIES for n in names):
        clients = set(re.findall(r"""boto3\.client\(\s*["'](\w+)["']""",
                                 (ROOT / path).read_text()))
        known |= {f"AWS {client}" for client in clients} or {"AWS"}
    return known


@pytest.mark.parametrize("path", SOURCES)
def test_no_class_is_over_200_lines(path: str) -> None:
    tree = ast.parse((ROOT / path).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            lines = node.end_lineno - node.lineno + 1
            assert lines <= MAX_CLASS_LINES, f"{path}: class {node.name} has {lines} lines"


@pytest.mark.parametrize("path", PRODUCTION)
def test_no_module_knows_two_services(path: str) -> None:
    known = services_known(path)
    assert len(known) <= 1, f"{path} knows {sorted(known)}"


@pytest.mark.parametrize("path", ["validation.py", *(
    str(p.relative_to(ROOT)) for p in (ROOT / "lmnh/core").glob("*.py"))])
def test_the_core_knows_no_service_and_nothing_of_the_shell(path: str) -> None:
    names = imported(path)
    assert not services_known(path), path
    shell = {n for n in names if n.split(".")[0] in ("db", "s3_metadata", "pipeline")
             or n.startswith(("lmnh.services", "lmnh.apps", "lmnh.local", "lmnh.settings"))}
    assert not shell, f"{path} imports {sorted(shell)}"


@pytest.mark.parametrize("path", ENTRY_POINTS)
def test_entry_points_import_only_the_core_the_services_and_the_settings(path: str) -> None:
    names = imported(path)
    assert not services_known(path), f"{path} uses a client library itself"
    own = {n for n in names if n.split(".")[0] in ("lmnh", "db", "s3_metadata", "validation",
                                                   "pipeline")}
    allowed = ("lmnh.core", "lmnh.services", "lmnh.settings", "lmnh.requires_python",
               "db", "s3_metadata", "validation")
    module = path.removesuffix(".py").replace("/", ".")
    apps = {n for n in own if n.startswith("lmnh.apps.") or n == "pipeline"}
    assert apps <= {module, f"{module}_auth"}, f"{path} imports the entry point(s) {apps}"
    others = {n for n in own if not n.startswith(allowed) and n not in (
        "lmnh", "lmnh.apps", module, f"{module}_auth", "lmnh.apps.dashboard_auth")}
    assert not others, f"{path} imports {sorted(others)}"


def test_the_checks_see_what_they_check() -> None:
    """The helpers find a client library and an entry point's import where there is one."""
    assert services_known("db.py") == {"PostgreSQL"}
    assert services_known("lmnh/services/alerts.py") == {"AWS sns"}
    assert services_known("lmnh/services/consumer.py") == {"Kafka"}
    assert "lmnh.services.writer" in imported("pipeline.py")
    assert len(ENTRY_POINTS) >= 7 and len(PRODUCTION) > 20
