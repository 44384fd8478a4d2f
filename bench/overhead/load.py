"""Closed-loop HTTP load with wrk (Debian package `wrk`): C connections, each sending its next request as soon
as the previous answer arrived, for a fixed duration. Requests are POSTs of chat completions that cycle over
a set of conversations (a shared system prompt plus each user's own context), so prefix-aware routers see
the prefix sharing of a multi-user chat workload.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench.multi_round_qa.prompts import (
    Conversation,
    shared_system_prompt,
    synthetic_question,
    user_history_prompt,
)

RESULT_PREFIX = "OVERHEAD_RESULT "

# wrk runs request() for every request and done() once; bodies are formatted once per thread in init().
_LUA = """
local bodies = {BODIES}
local requests = {}
local next_index = 1
function init(args)
  for i, body in ipairs(bodies) do
    requests[i] = wrk.format("POST", "/v1/chat/completions",
      {["Content-Type"] = "application/json", ["Authorization"] = "Bearer EMPTY"}, body)
  end
end
function request()
  local r = requests[next_index]
  next_index = next_index % #requests + 1
  return r
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT_PREFIX{\\"requests\\":%d,\\"duration_us\\":%d,\\"connect\\":%d,\\"read\\":%d,\\"write\\":%d," ..
    "\\"status\\":%d,\\"timeout\\":%d,\\"p50_us\\":%d,\\"p90_us\\":%d,\\"p99_us\\":%d,\\"mean_us\\":%.1f}\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
"""


class LoadError(RuntimeError):
    """wrk is missing or failed."""


@dataclass(frozen=True)
class LoadResult:
    """One wrk run: completed requests, errors and latency percentiles."""

    requests: int
    duration_s: float
    errors: int  # connect/read/write errors, timeouts and non-2xx/3xx answers
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0


def find_wrk() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise LoadError("wrk is not installed: apt-get install wrk (scripts/bootstrap.sh does)")
    return found


def chat_bodies(model: str, users: int, system_tokens: int, user_tokens: int, seed: int = 0) -> list[bytes]:
    """First-round chat completion bodies of `users` users sharing one system prompt."""
    system = shared_system_prompt(system_tokens, seed)
    bodies = []
    for user in range(users):
        conversation = Conversation(system, user_history_prompt(user, user_tokens, seed))
        conversation.add_question(synthetic_question(1))
        body = {"model": model, "messages": conversation.messages, "max_tokens": 16, "temperature": 0}
        bodies.append(orjson.dumps(body))
    return bodies


def render_script(bodies: list[bytes]) -> str:
    """The wrk Lua script cycling over `bodies` (JSON, so free of Lua long-bracket closers)."""
    literals = []
    for body in bodies:
        text = body.decode()
        if "]==]" in text:
            raise ValueError("a request body contains ']==]'")
        literals.append(f"[==[{text}]==]")
    return _LUA.replace("{BODIES}", "{" + ",\n".join(literals) + "}").replace("RESULT_PREFIX", RESULT_PREFIX)


def parse_output(stdout: str) -> LoadResult:
    """The LoadResult in wrk's output (the line done() printed)."""
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            raw = orjson.loads(line[len(RESULT_PREFIX) :])
            errors = sum(raw[k] for k in ("connect", "read", "write", "status", "timeout"))
            return LoadResult(
                requests=raw["requests"],
                duration_s=raw["duration_us"] / 1e6,
                errors=errors,
                p50_ms=raw["p50_us"] / 1e3,
                p90_ms=raw["p90_us"] / 1e3,
                p99_ms=raw["p99_us"] / 1e3,
                mean_ms=raw["mean_us"] / 1e3,
            )
    raise LoadError(f"no result line in wrk's output: {stdout[-500:]!r}")


class WrkLoad:
    """Runs wrk with one thread against OpenAI base URLs (chat completions at URL/v1/chat/completions)."""

    def __init__(self, bodies: list[bytes], timeout_s: float = 10.0) -> None:
        self.wrk = find_wrk()
        self.timeout_s = timeout_s
        self._dir = tempfile.TemporaryDirectory(prefix="epp-overhead-wrk-")
        self.script = Path(self._dir.name) / "chat.lua"
        self.script.write_text(render_script(bodies), "utf-8")

    def run(self, base_url: str, concurrency: int, duration_s: float) -> LoadResult:
        """Keep `concurrency` requests in flight for `duration_s` seconds."""
        if concurrency < 1 or duration_s <= 0:
            raise ValueError("concurrency must be >= 1 and duration > 0")
        cmd = [self.wrk, "-t1", f"-c{concurrency}", f"-d{duration_s:g}s", f"--timeout={self.timeout_s:g}s"]
        cmd += ["-s", str(self.script), f"{base_url}/v1/chat/completions"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + self.timeout_s + 30)
        if done.returncode != 0:
            raise LoadError(f"wrk exited with {done.returncode}: {done.stderr.strip()[-500:]}")
        return parse_output(done.stdout)

    def close(self) -> None:
        self._dir.cleanup()
