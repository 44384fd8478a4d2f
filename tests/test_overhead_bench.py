"""bench/overhead: the wrk/nginx harness end to end (direct + epp gateway), and its parts."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import orjson
import pytest

from bench.overhead.__main__ import main
from bench.overhead.backend import MODEL, NginxBackend
from bench.overhead.cpu import descendants, read_stat, sample
from bench.overhead.envoy_alone import config_without_picker
from bench.overhead.load import LoadResult, chat_bodies, parse_output, render_script
from bench.overhead.report import format_report, format_table
from bench.overhead.runner import Measurement, OverheadConfig, OverheadResult, run_overhead
from bench.overhead.targets import all_targets


def measurement(target: str, conc: int, requests: int, p50: float, p99: float, cpu_s: float) -> Measurement:
    load = LoadResult(requests, 1.0, 0, p50, p50, p99, p50)
    return Measurement(target, conc, load, cpu_s, {"router": cpu_s}, 0.1, 0.1, (0.5, 0.4, 0.3))


def test_parse_output_reads_the_result_line_and_sums_errors() -> None:
    line = (
        'OVERHEAD_RESULT {"requests":2000,"duration_us":2000000,"connect":0,"read":1,"write":0,'
        '"status":3,"timeout":1,"p50_us":1500,"p90_us":2500,"p99_us":9000,"mean_us":1700.0}'
    )
    r = parse_output(f"Running 2s test\n{line}\n")
    assert (r.requests, r.errors, r.rps) == (2000, 5, 1000.0)
    assert (r.p50_ms, r.p90_ms, r.p99_ms) == (1.5, 2.5, 9.0)


def test_render_script_embeds_every_body() -> None:
    bodies = chat_bodies(MODEL, users=3, system_tokens=20, user_tokens=10)
    script = render_script(bodies)
    for body in bodies:
        assert f"[==[{body.decode()}]==]" in script
    first = orjson.loads(bodies[0])
    assert first["model"] == MODEL
    # Users share the system prompt, and differ after it.
    assert first["messages"][0] == orjson.loads(bodies[1])["messages"][0]
    assert first["messages"][1] != orjson.loads(bodies[1])["messages"][1]


def test_format_table_adds_latency_over_direct_and_ratios_to_baseline() -> None:
    result = OverheadResult(
        [
            measurement("direct", 8, 10_000, 0.5, 2.0, 0.0),
            measurement("peer", 8, 4_000, 1.5, 5.0, 0.4),
            measurement("epp", 8, 2_000, 3.0, 12.0, 0.6),
        ],
        {"envoy-epp": "StackError: no envoy binary"},
    )
    table = format_table(result, "peer")
    epp_row = next(line for line in table.splitlines() if line.startswith("| epp |"))
    cells = [c.strip() for c in epp_row.strip("|").split("|")]
    # target, conc, req/s, p50, p99, +p50, +p99, CPU µs/req, rps ratio, CPU ratio, errors
    assert cells == ["epp", "8", "2,000", "3.00", "12.00", "+2.50", "+10.00", "300", "0.50", "3.00", "0"]
    assert "envoy-epp did not run: StackError: no envoy binary" in table
    assert "CPU: " in format_report(result, "peer", "python -m bench.overhead")


def test_cpu_accounting_sees_child_processes() -> None:
    me = read_stat(os.getpid())
    assert me is not None and me.ppid == os.getppid() and me.cpu_s > 0
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert busy.pid in {s.pid for s in descendants(os.getpid())}
        first = sample(backend_pgid=-1)
        while (spent := sample(backend_pgid=-1).minus(first)).router_s <= 0:
            pass
        assert spent.backend_s == 0
    finally:
        busy.kill()
        busy.wait()
    assert read_stat(busy.pid) is None


def test_cli_rejects_unknown_targets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--targets", "direct,haproxy"]) == 2
    assert "unknown targets ['haproxy']" in capsys.readouterr().err


@pytest.mark.slow
def test_backend_serves_canned_pods() -> None:
    with NginxBackend(pods=2) as backend:
        assert len(set(backend.urls)) == 2
        for url in backend.urls:
            r = httpx.post(f"{url}/v1/chat/completions", json={"model": MODEL, "messages": []}, timeout=5)
            assert r.status_code == 200 and r.json()["object"] == "chat.completion"
            assert "vllm:num_requests_waiting" in httpx.get(f"{url}/metrics", timeout=5).text
        assert httpx.get(f"{backend.urls[0]}/nope", timeout=5).status_code == 404
        proc = backend.proc
    assert proc is not None and proc.poll() is not None


@pytest.mark.slow
def test_harness_measures_direct_and_epp_gateway() -> None:
    targets = all_targets()
    cfg = OverheadConfig(
        targets=[targets["direct"], targets["epp-gateway"]],
        concurrency=[1, 4],
        duration_s=1,
        warmup_s=0,
        pods=2,
        users=8,
        system_tokens=32,
        user_tokens=32,
    )
    result = run_overhead(cfg, log=lambda _: None)
    assert result.failures == {}
    assert [(m.target, m.concurrency) for m in result.measurements] == [
        ("direct", 1),
        ("direct", 4),
        ("epp-gateway", 1),
        ("epp-gateway", 4),
    ]
    for m in result.measurements:
        assert m.load.requests > 0 and m.load.rps > 0
        assert m.load.errors == 0
        assert 0 < m.load.p50_ms <= m.load.p99_ms
    gateway = [m for m in result.measurements if m.target == "epp-gateway"]
    assert all(m.router_cpu_s > 0 for m in gateway)
    table = format_table(result, "direct")
    assert table.count("| epp-gateway |") == 2 and table.count("| direct |") == 2


def test_envoy_alone_config_drops_only_the_picker() -> None:
    config = config_without_picker([("127.0.0.1", 8100), ("127.0.0.1", 8101)])
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert [f["name"] for f in hcm["http_filters"]] == ["envoy.filters.http.router"]
    pool = config["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"]["port_value"] for e in pool] == [8100, 8101]


@pytest.mark.slow
def test_harness_measures_the_envoy_paths() -> None:
    targets = all_targets()
    cfg = OverheadConfig(
        targets=[targets["envoy-alone"], targets["envoy-epp"]],
        concurrency=[2],
        duration_s=1,
        warmup_s=0,
        pods=2,
        users=4,
        system_tokens=16,
        user_tokens=16,
    )
    result = run_overhead(cfg, log=lambda _: None)
    assert result.failures == {}
    by_target = {m.target: m for m in result.measurements}
    assert set(by_target) == {"envoy-alone", "envoy-epp"}
    for m in by_target.values():
        assert m.load.requests > 0 and m.load.errors == 0
        assert "envoy" in m.router_cpu_by_process

    # Only the picked path runs epp serve (a Python process) beside Envoy.
    def runs_python(m: Measurement) -> bool:
        return any(name.startswith("python") for name in m.router_cpu_by_process)

    assert not runs_python(by_target["envoy-alone"])
    assert runs_python(by_target["envoy-epp"])
