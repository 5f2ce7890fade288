"""The demo runs the real pipeline on embedded services and reports what the database holds."""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import termios
import threading
from collections import Counter
from datetime import datetime
from pathlib import Path

import psycopg2
import pytest
from conftest import ROOT, wait_until

from lmnh.local.embedded import EmbeddedPostgres, free_port


@pytest.mark.slow
def test_the_demo_runs_and_its_report_matches_the_database(tmp_path: Path) -> None:
    port = str(free_port())
    where = ["--data-dir", str(tmp_path / "demo"), "--pg-port", port]
    try:
        result = subprocess.run([sys.executable, "-m", "lmnh.local.demo", "--duration", "8",
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
        subprocess.run([sys.executable, "-m", "lmnh.local.demo", "--stop-db", *where], cwd=ROOT,
                       timeout=60, check=True)
        EmbeddedPostgres(tmp_path / "demo" / "pg", int(port)).remove()  # as root: in /tmp


# ------------------------------------------------------------------ Ctrl-C in a terminal


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(parent pid, session id, start time) of a live process, None when gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[3]), int(fields[19])


def _descendants(root: int) -> set[tuple[int, int]]:
    """(pid, start time) of every live process below `root`."""
    parents: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            parents[int(entry.name)] = (stat[0], stat[2])
    found: set[tuple[int, int]] = set()
    frontier = {root}
    while frontier:
        children = {pid for pid, (ppid, _) in parents.items() if ppid in frontier}
        found |= {(pid, parents[pid][1]) for pid in children}
        frontier = children
    return found


def _alive(process: tuple[int, int]) -> bool:
    stat = _stat(process[0])
    return stat is not None and stat[2] == process[1]


class Terminal:
    """A pseudo-terminal whose output is read as it comes, so the program never blocks on it."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.output = bytearray()
        self.reader = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: every process holding the terminal has exited
                return
            if not chunk:
                return
            self.output += chunk

    def text(self) -> str:
        return self.output.decode(errors="replace").replace("\r\n", "\n")

    def start(self, command: list[str]) -> subprocess.Popen:
        def controlling_terminal() -> None:  # runs in the child, after setsid
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        process = subprocess.Popen(command, cwd=ROOT, stdin=self.slave, stdout=self.slave,
                                   stderr=self.slave, start_new_session=True,
                                   preexec_fn=controlling_terminal)
        os.close(self.slave)
        self.reader.start()
        return process

    def press_ctrl_c(self) -> None:
        os.write(self.master, b"\x03")  # the line discipline sends SIGINT to the foreground group


def _recorded(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_stops_the_demo_cleanly_and_the_rows_are_what_the_kiosks_sent(
        tmp_path: Path) -> None:
    """`python3 dev.py demo` in a terminal, then Ctrl-C once the pipeline is storing presses.

    Runs `dev.run` (what `dev.py demo` runs once its .venv exists) in a session of its own with
    a pseudo-terminal as its controlling terminal, so Ctrl-C reaches dev.py and demo.py as it
    would from a shell. The simulator's own record of what it sent is the oracle for the rows.
    """
    port = str(free_port())
    record = tmp_path / "presses.jsonl"
    where = ["--data-dir", str(tmp_path / "demo"), "--pg-port", port]
    demo = [sys.executable, "-m", "lmnh.local.demo", "--rate", "40", "--seed", "11",
            "--dashboard-port", str(free_port()), "--record", str(record), *where]
    dev = f"import os, sys, dev; sys.exit(dev.run({demo!r}, dict(os.environ)))"
    terminal = Terminal()
    started: set[tuple[int, int]] = set()
    try:
        process = terminal.start([sys.executable, "-c", dev])
        wait_until(lambda: re.search(r"stats: consumed=\d+ accepted=[1-9]", terminal.text())
                   is not None or process.poll() is not None, 120, "the pipeline storing")
        assert process.poll() is None, terminal.text()[-3000:]
        started = _descendants(process.pid)
        cluster = EmbeddedPostgres(tmp_path / "demo" / "pg", int(port)).cluster_dir
        postmaster = int((cluster / "postmaster.pid").read_text().split()[0])
        started = {p for p in started if p[0] != postmaster}
        assert len(started) >= 2, started  # demo.py, the pipeline (and the dashboard)
        terminal.press_ctrl_c()
        assert process.wait(timeout=120) == 0, terminal.text()[-3000:]
        wait_until(lambda: not terminal.reader.is_alive(), 30, "the terminal's last output")
        out = terminal.text()
        survivors = [pid for pid, since in started if _alive((pid, since))]
        assert not survivors, (survivors, out[-2000:])

        assert out.count("SIGINT: stopping...") == 1 and "already stopping" not in out
        assert "KeyboardInterrupt" not in out and "Traceback" not in out
        assert "pipeline: stopped cleanly" in out
        assert "== Report (from the database" in out
        assert "stop the database: python3 dev.py demo --stop-db" in out

        # The oracle: what the simulator says it sent, against the rows and the report.
        sent = _recorded(record)
        conn = psycopg2.connect(f"postgresql://postgres@127.0.0.1:{port}/lmnh_demo")
        with conn.cursor() as cur:
            cur.execute("SELECT source_partition, source_offset, exhibition_id, rating_value,"
                        " event_at FROM rating_interaction")
            ratings = {(p, o): (site, value, at) for p, o, site, value, at in cur.fetchall()}
            cur.execute("SELECT source_partition, source_offset, exhibition_id, request_value,"
                        " event_at FROM request_interaction")
            requests = {(p, o): (site, value, at) for p, o, site, value, at in cur.fetchall()}
            cur.execute("SELECT source_partition, source_offset FROM rejected_message")
            rejected = set(cur.fetchall())
        conn.close()
        stored = set(ratings) | set(requests) | rejected
        # Each partition is stored in offset order: what was stored is a prefix of what was sent
        # (all of it: the demo waits for the pipeline to store every press before stopping it).
        reached = {}
        for partition, offset in stored:
            reached[partition] = max(reached.get(partition, -1), offset)
        judged = [press for press in sent if press["offset"] <= reached.get(press["partition"], -1)]
        assert len(judged) == len(sent) > 100, (len(judged), len(sent))  # the demo waits for all
        want_ratings, want_requests, want_rejected = {}, {}, set()
        for press in judged:
            key = (press["partition"], press["offset"])
            message = json.loads(press["value"])
            at = datetime.fromisoformat(message.get("at", "1970-01-01T00:00:00+00:00"))
            if press["kind"] == "rating":
                want_ratings[key] = (int(message["site"]), message["val"], at)
            elif press["kind"] in ("assistance", "emergency"):
                want_requests[key] = (int(message["site"]), message["type"], at)
            else:
                want_rejected.add(key)
        assert ratings == want_ratings
        assert requests == want_requests
        assert rejected == want_rejected

        per_site = Counter(site for site, _, _ in want_ratings.values())
        for site in range(6):
            row = re.search(rf"^EXH_0{site} .*?\s(\d+)\s+\S+$", out, re.MULTILINE)
            assert row is not None and int(row.group(1)) == per_site[site], (site, out[-1500:])
        kinds = Counter(value for _, value, _ in want_requests.values())
        assert f"requests: assistance {kinds[0]}, emergency {kinds[1]}" in out
    finally:
        for pid, since in started:  # after a failure, leave nothing behind
            if _alive((pid, since)):
                os.kill(pid, signal.SIGKILL)
        subprocess.run([sys.executable, "-m", "lmnh.local.demo", "--stop-db", *where], cwd=ROOT,
                       timeout=60, check=True)
        EmbeddedPostgres(tmp_path / "demo" / "pg", int(port)).remove()  # as root: in /tmp


def test_sigterm_sent_to_dev_py_alone_reaches_the_command_once(tmp_path: Path) -> None:
    """`kill <dev.py's pid>` (a service manager, a script): dev.py passes it on and waits."""
    script = tmp_path / "child.py"
    script.write_text(
        "import signal, sys, time\n"
        "got = []\n"
        "signal.signal(signal.SIGTERM, lambda *_: got.append(1))\n"
        "print('ready', flush=True)\n"
        "deadline = time.monotonic() + 60\n"
        "while not got and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n"
        "time.sleep(1)\n"
        "print('terms', len(got), flush=True)\n"
        "sys.exit(3)\n")
    dev = f"import sys, dev; sys.exit(dev.run([sys.executable, {str(script)!r}], {{}}))"
    process = subprocess.Popen([sys.executable, "-c", dev], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 3
    rest = process.stdout.read()
    assert rest == "terms 1\n", rest
