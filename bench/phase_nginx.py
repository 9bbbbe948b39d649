"""nginx phase: two proxies behind nginx under non-streaming load, then settlement."""

from __future__ import annotations

import signal

from bench import procs, world
from bench.harness import Bench, log
from bench.load import BODY, Target
from bench.phase_load import measured_run
from bench.phase_settle import settle_backlog


async def nginx(bench: Bench) -> None:
    binary, why = procs.ensure_nginx()
    if binary is None:
        log(f"nginx part skipped: {why}")
        bench.results["nginx"] = {"skipped": why}
        return
    sizes = bench.sizes
    log(f"two proxies behind nginx, non-streaming c={sizes.concurrency}")
    proxy2, proxy2_url = await bench.start_proxy("proxy2")
    ports = [int(bench.proxy_url.rsplit(":", 1)[1]), int(proxy2_url.rsplit(":", 1)[1])]
    port = procs.free_port()
    directory = bench.workdir / "nginx"
    conf = procs.write_nginx_conf(directory, port, ports)
    ng = bench.procs.spawn(
        "nginx",
        [
            binary,
            "-p",
            str(directory),
            "-c",
            str(conf),
            "-e",
            str(directory / "nginx-error.log"),
        ],
    )
    try:
        await procs.wait_http(f"http://127.0.0.1:{port}/healthz", ng)
        workers = procs.children_of(ng.pid)
        _, proxy = bench.targets()
        target = Target(
            "nginx",
            f"http://127.0.0.1:{port}/v1/openai/chat/completions",
            proxy.headers,
            billed=True,
        )
        sampler = bench.sampler(
            proxy=[bench.proxy.pid, proxy2.pid], nginx=[ng.pid, *workers], sim=[bench.sim.pid]
        )
        res = await measured_run(bench, target, BODY, False, sampler, sizes.duration)
    finally:
        bench.procs.stop(ng, signal.SIGQUIT)
        bench.procs.stop(proxy2)
    log(f"  {res['rps']:,.0f} req/s, {res['errors']} errors")
    await settle_backlog(bench, "nginx run")
    bal = await world.balance_check(bench.pg, bench.redis, bench.world)
    bench.results["nginx"] = {
        **res,
        "concurrency": sizes.concurrency,
        "duration_s": sizes.duration,
        "balance": bal,
    }
