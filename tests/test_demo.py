"""The demo runs the real pipeline on embedded services and reports what the database holds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import psycopg2
from conftest import ROOT

from embedded import EmbeddedPostgres, free_port


def test_the_demo_runs_and_its_report_matches_the_database(tmp_path: Path) -> None:
    port = str(free_port())
    where = ["--data-dir", str(tmp_path / "demo"), "--pg-port", port]
    try:
        result = subprocess.run([sys.executable, str(ROOT / "demo.py"), "--duration", "8",
                                 "--rate", "40", "--seed", "7", *where],
                                cwd=ROOT, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        out = result.stdout
        assert "stats: consumed=" in out and "stopped cleanly" in out
        assert "Traceback" not in out + result.stderr

        conn = psycopg2.connect(f"postgresql://postgres@127.0.0.1:{port}/lmnh_demo")
        with conn.cursor() as cur:
            cur.execute("""SELECT e.public_id, count(r.rating_value), round(avg(r.rating_value), 2)
                           FROM exhibition e LEFT JOIN rating_interaction r USING (exhibition_id)
                           GROUP BY e.exhibition_id ORDER BY 1""")
            per_exhibition = cur.fetchall()
            cur.execute("SELECT request_value, count(*) FROM request_interaction GROUP BY 1")
            requests = dict(cur.fetchall())
        conn.close()

        assert len(per_exhibition) == 6
        assert sum(count for _, count, _ in per_exhibition) > 100  # 8 s at 40 a second
        for public_id, count, mean in per_exhibition:
            row = re.search(rf"^{public_id} .*?\s(\d+)\s+(\S+)$", out, re.MULTILINE)
            assert row is not None, public_id
            assert int(row.group(1)) == count
            assert row.group(2) == ("-" if mean is None else str(mean))
        shown = re.search(r"^requests: assistance (\d+), emergency (\d+)$", out, re.MULTILINE)
        assert shown is not None
        assert (int(shown.group(1)), int(shown.group(2))) == (requests.get(0, 0),
                                                               requests.get(1, 0))
        log_lines = (tmp_path / "demo" / "erroneous_data.log").read_text().splitlines()
        shown_rejects = re.search(r"^rejected: (.*)$", out, re.MULTILINE)
        assert shown_rejects is not None
        total_shown = sum(int(n) for n in re.findall(r"\s(\d+)", " " + shown_rejects.group(1)))
        assert total_shown == len(log_lines) > 0
        assert f"-p {port} -U postgres lmnh_demo" in out
    finally:
        subprocess.run([sys.executable, str(ROOT / "demo.py"), "--stop-db", *where], cwd=ROOT,
                       timeout=60, check=True)
        EmbeddedPostgres(tmp_path / "demo" / "pg", int(port)).remove()  # as root: in /tmp
