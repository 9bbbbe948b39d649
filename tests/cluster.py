"""A throwaway local Redis Cluster of three masters (no replicas) for the tests.

Each node is a `redis-server --cluster-enabled yes` on a loopback port picked
at random (its bus port, port + 10000, free too); `redis-cli --cluster create`
joins them. `stop()` kills every node and `start()` brings them back with
their node files, so the cluster keeps its slot layout across a restart
(like `RedisServer`, it keeps no data). `move_slot` migrates one slot, keys
and all, the way `redis-cli --cluster reshard` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
from pathlib import Path

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from shared.redis_client import cluster_client


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisClusterServer:
    """Three cluster masters; `url` names the first (a client discovers the rest)."""

    def __init__(self, masters: int = 3, ports: list[int] | None = None) -> None:
        self.ports = ports or [_free_cluster_port() for _ in range(masters)]
        self.dir = Path(tempfile.mkdtemp(prefix="meterway-cluster-"))
        self.procs: list[asyncio.subprocess.Process] = []
        self._created = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def node_url(self, port: int) -> str:
        return f"redis://127.0.0.1:{port}/0"

    async def start(self) -> None:
        for port in self.ports:
            self.procs.append(await self._spawn(port))
        for port in self.ports:
            await _wait_port(port)
        if not self._created:
            await self._create()
            self._created = True
        await self.wait_ok()

    async def kill_node(self, port: int) -> None:
        """SIGKILL one master (its data is gone; its node file stays)."""
        proc = self.procs[self.ports.index(port)]
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    async def restart_node(self, port: int) -> None:
        self.procs[self.ports.index(port)] = await self._spawn(port)
        await _wait_port(port)
        await self.wait_ok()

    async def _spawn(self, port: int) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            shutil.which("redis-server") or "/usr/bin/redis-server",
            "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--cluster-enabled", "yes", "--cluster-node-timeout", "5000",
            "--cluster-config-file", str(self.dir / f"nodes-{port}.conf"),
            "--dir", str(self.dir),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip

    async def _create(self) -> None:
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        proc = await asyncio.create_subprocess_exec(
            cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
            "--cluster-replicas", "0", "--cluster-yes",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise AssertionError(f"redis-cli --cluster create failed: {out.decode()[-2000:]}")

    async def wait_ok(self, timeout: float = 30.0) -> None:
        """Every node says cluster_state:ok and knows every slot's owner."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            states = []
            for port in self.ports:
                with contextlib.suppress(Exception):
                    client = Redis(host="127.0.0.1", port=port)
                    try:
                        info = await client.execute_command("CLUSTER", "INFO")
                        states.append(b"cluster_state:ok" in info)
                    finally:
                        await client.aclose()
            if len(states) == len(self.ports) and all(states):
                return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("the Redis Cluster did not reach cluster_state:ok")
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        self.procs.clear()

    async def destroy(self) -> None:
        await self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    async def flushall(self) -> None:
        for port in self.ports:
            client = Redis(host="127.0.0.1", port=port)
            try:
                await client.flushall()
            finally:
                await client.aclose()

    async def node_ids(self) -> dict[int, str]:
        client = Redis(host="127.0.0.1", port=self.ports[0])
        try:
            nodes = (await client.execute_command("CLUSTER", "NODES")).decode()
        finally:
            await client.aclose()
        ids = {}
        for line in nodes.splitlines():
            node_id, address = line.split()[:2]
            ids[int(address.split("@")[0].rsplit(":", 1)[1])] = node_id
        return ids

    async def owner(self, slot: int) -> int:
        client = Redis(host="127.0.0.1", port=self.ports[0])
        try:
            for start, end, master, *_ in await client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        finally:
            await client.aclose()
        raise AssertionError(f"slot {slot} has no owner")

    async def move_slot(self, slot: int, target: int, *, pause: float = 0.0) -> None:
        """Migrate `slot` (and its keys) to the node on port `target`: IMPORTING on
        the target, MIGRATING on the source, keys moved one at a time (sleeping
        `pause` between them, so requests meet the slot mid-migration and get ASK
        or TRYAGAIN), then NODE on every master."""
        source = await self.owner(slot)
        if source == target:
            return
        ids = await self.node_ids()
        src = Redis(host="127.0.0.1", port=source)
        dst = Redis(host="127.0.0.1", port=target)
        try:
            await dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
            await src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
            while keys := await src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10):
                for key in keys:
                    await src.execute_command(
                        "MIGRATE", "127.0.0.1", target, key, 0, 5000, "REPLACE"
                    )
                    if pause:
                        await asyncio.sleep(pause)
            for port in self.ports:
                node = Redis(host="127.0.0.1", port=port)
                try:
                    await node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])
                finally:
                    await node.aclose()
        finally:
            await src.aclose()
            await dst.aclose()


async def _wait_port(port: int) -> None:
    for _ in range(200):
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"redis-server on {port} did not start")


# --- running the suite on a cluster (TEST_REDIS_CLUSTER=1) ------------------------------

CLUSTER = os.environ.get("TEST_REDIS_CLUSTER") == "1"
"""Run the tests on a local Redis Cluster: the session's Redis and every private
Redis of the fault tests are 3-master clusters started here; arq's queue (which
needs a plain Redis) goes to TEST_REDIS_URL's database, or a private plain Redis."""


def client(url: str) -> Redis | RedisCluster:
    """A client for the tests' Redis, a cluster one under TEST_REDIS_CLUSTER=1."""
    return cluster_client(url) if CLUSTER else Redis.from_url(url)


def settings_overrides() -> dict:
    if not CLUSTER:
        return {}
    arq = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
    return {"redis_cluster": True, "arq_redis_url": arq}


class PrivateCluster:
    """What `tests.stack.RedisServer` is for one fault test, as a cluster: `stop()`
    takes every node (and arq's plain Redis) away, `start()` brings them back empty."""

    def __init__(self) -> None:
        from tests.stack import RedisServer

        self.cluster = RedisClusterServer()
        self.arq = RedisServer()

    @property
    def url(self) -> str:
        return self.cluster.url

    @property
    def env(self) -> dict[str, str]:
        return {"REDIS_CLUSTER": "1", "ARQ_REDIS_URL": self.arq.url}

    async def start(self) -> None:
        await self.arq.start()
        await self.cluster.start()

    async def stop(self) -> None:
        await self.cluster.stop()
        await self.arq.stop()

    async def destroy(self) -> None:
        await self.cluster.destroy()
        await self.arq.stop()


def private_server():
    """A private Redis for one test: a plain server, or a cluster under TEST_REDIS_CLUSTER=1."""
    from tests.stack import RedisServer

    return PrivateCluster() if CLUSTER else RedisServer()
