"""The README's five-minute tour, run as written: every command of its ``sh`` blocks, in order,
in a fresh ``GENVISOR_HOME`` (issue 14: the tour must work when followed literally).

    python bench/readme_tour.py [--readme README.md]

It plays the two terminals of the tour. A ``make serve`` line (with its environment prefix)
starts the server in the background (terminal 1) and waits until `genvisor state` answers; a
block that starts a server first stops the running one with SIGINT, the Ctrl-C its prose asks
for. Every other line runs in a shell (terminal 2) with ``.venv/bin`` first on ``PATH`` and the
previous job's id for ``<id>``. The working folder is a fresh one holding links to the
checkout's Makefile, pyproject.toml and .venv, so that ``make serve`` runs as written and the
files the tour writes (boat.mp4, heavy.toml, first.png) stay out of the checkout.

A line passes when it exits 0, or non-zero when its comment says it fails ("refused", "needs
about": the two refusals the tour shows), and when its output shows what the tour says it shows
(`_SHOWS`: the recovery's sentence, the DEGRADED reason, the modes, the models named by a
refusal); a line that runs until interrupted (``events``, "Ctrl-C") passes when it printed
something within a few seconds. Ends with one JSON line:
``{"lines", "passed", "failed": [...], "seconds"}``; exits 1 when any line failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_SECTION = re.compile(r"^## A five-minute tour\n(.*?)^## ", re.S | re.M)
_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)
_HEREDOC = re.compile(r"<<'?(\w+)'?")
_JOB_ID = re.compile(r"\bjob (j[0-9a-f]{6,})")
_EXPECTED_FAILURE = ("refused", "needs about")
_UNTIL_INTERRUPTED = "Ctrl-C"
# What the tour says a line shows, checked in its output (a line, then one of the phrases).
_SHOWS = (
    ("genvisor jobs show <id>", ("ran the VAE in tiles", "pre-flight predicted")),
    ("--model tiny-wan-heavy", ("needs about",)),
    ("DEGRADED: model:tiny-wan-heavy", ("DEGRADED",)),
    ("genvisor models list", ("flf2v",)),
    ('"a boat" --image', ("tiny-wan-i2v",)),
    ("genvisor state --graph", ("stateDiagram",)),
)
_LINE_TIMEOUT_S = 300.0
_SERVER_START_S = 180.0


def tour_blocks(readme: str) -> list[list[str]]:
    """The commands of each ``sh`` block of the tour; a heredoc is one command with its body."""
    section = _SECTION.search(readme)
    if section is None:
        raise SystemExit("README has no '## A five-minute tour' section")
    blocks = []
    for body in _BLOCK.findall(section.group(1)):
        commands: list[str] = []
        lines = iter(body.splitlines())
        for line in lines:
            heredoc = _HEREDOC.search(line)
            if heredoc:
                end = heredoc.group(1)
                rest = [line]
                for more in lines:
                    rest.append(more)
                    if more.strip() == end:
                        break
                commands.append("\n".join(rest))
            elif line.strip():
                commands.append(line)
        blocks.append(commands)
    return blocks


def _as_typed() -> None:
    """In each command's process: Ctrl-C works as in a terminal. A tour started in the
    background of a non-interactive shell (`make tour &`) inherits SIGINT ignored, and a server
    or `events` started from it would then never stop on the tour's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _comment(command: str) -> str:
    return command.partition("  #")[2] if "  #" in command else ""


class Tour:
    def __init__(self, workdir: Path, home: Path) -> None:
        self.workdir = workdir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GENVISOR_")}
        self.env["GENVISOR_HOME"] = str(home)
        self.env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{self.env.get('PATH', '')}"
        self.server: subprocess.Popen[bytes] | None = None
        self.background: list[subprocess.Popen[bytes]] = []
        self.last_job: str | None = None
        self.results: list[dict[str, object]] = []

    def _shell(self, command: str, **kw: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(  # noqa: S602 - the README's own commands, as a person types them
            ["bash", "-c", command],
            cwd=self.workdir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_as_typed,
            **kw,  # type: ignore[arg-type]
        )

    def stop_server(self) -> None:
        for proc in [*self.background, *([self.server] if self.server else [])]:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        self.server, self.background = None, []

    def start_server(self, command: str) -> bool:
        self.server = subprocess.Popen(  # noqa: S602
            ["bash", "-c", command.split("  #")[0]],
            cwd=self.workdir,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_as_typed,
        )
        deadline = time.monotonic() + _SERVER_START_S
        while time.monotonic() < deadline and self.server.poll() is None:
            probe = subprocess.run(
                ["genvisor", "state"], cwd=self.workdir, env=self.env, capture_output=True
            )
            if probe.returncode == 0:
                return True
            time.sleep(1.0)
        return False

    def _job_running(self, limit_s: float = 60.0) -> bool:
        """Whether the generator reports a running job within `limit_s` (asked, not slept on)."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            probe = subprocess.run(
                ["genvisor", "state", "--json"], cwd=self.workdir, env=self.env, capture_output=True
            )
            if probe.returncode == 0:
                children = json.loads(probe.stdout)["children"]
                if any(c["id"] == "generator" and c.get("job_id") for c in children):
                    return True
            time.sleep(0.5)
        return False

    def run_line(self, command: str) -> None:
        started = time.monotonic()
        text = command.replace("<id>", self.last_job or "<id>")
        comment = _comment(command)
        if command.lstrip().startswith(("make serve", "GENVISOR_")) and "make serve" in command:
            ok, output = self.start_server(text), ""
        elif _UNTIL_INTERRUPTED in comment:
            proc = self._shell(text)
            time.sleep(5.0)
            os.killpg(proc.pid, signal.SIGINT)
            try:
                output = proc.communicate(timeout=30)[0].decode(errors="replace")
                ok = bool(output.strip())
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                output = "did not stop within 30 s of Ctrl-C\n" + proc.communicate()[0].decode(
                    errors="replace"
                )
                ok = False
        elif text.rstrip().endswith("&"):
            self.background.append(self._shell(text.rstrip().rstrip("&")))
            # The tour's next line kills the worker of this job: wait until the worker runs it.
            ok, output = self._job_running(), ""
        else:
            proc = self._shell(text)
            try:
                output = proc.communicate(timeout=_LINE_TIMEOUT_S)[0].decode(errors="replace")
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                output = proc.communicate()[0].decode(errors="replace")
            expect_failure = any(word in comment for word in _EXPECTED_FAILURE)
            ok = (proc.returncode != 0) if expect_failure else proc.returncode == 0
            for where, phrases in _SHOWS:
                if where in command and not any(p in output for p in phrases):
                    ok = False
            if (found := _JOB_ID.search(output)) is not None:
                self.last_job = found.group(1)
        line = command.splitlines()[0][:120]
        self.results.append(
            {"line": line, "ok": ok, "seconds": round(time.monotonic() - started, 1)}
            | ({} if ok else {"output": output[-1500:]})
        )
        print(f"{'ok  ' if ok else 'FAIL'} {line}", file=sys.stderr, flush=True)


def main(readme: Path) -> int:
    started = time.monotonic()
    blocks = tour_blocks(readme.read_text())
    with tempfile.TemporaryDirectory(prefix="genvisor-tour-") as tmp:
        workdir, home = Path(tmp) / "checkout", Path(tmp) / "home"
        workdir.mkdir()
        for name in ("Makefile", "pyproject.toml", ".venv"):
            (workdir / name).symlink_to(ROOT / name)
        tour = Tour(workdir, home)
        try:
            for block in blocks:
                if any("make serve" in command for command in block):
                    tour.stop_server()  # the Ctrl-C the tour asks for before a new server
                for command in block:
                    tour.run_line(command)
        finally:
            tour.stop_server()
    failed = [r for r in tour.results if not r["ok"]]
    figures = {
        "lines": len(tour.results),
        "passed": len(tour.results) - len(failed),
        "failed": failed,
        "seconds": round(time.monotonic() - started, 1),
    }
    print(json.dumps(figures), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    sys.exit(main(parser.parse_args().readme))
