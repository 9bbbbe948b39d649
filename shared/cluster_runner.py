"""The pipelined script runner on a Redis Cluster: one pipelined connection per
master, each script sent to the master of its keys' slot.

The slot map comes from CLUSTER SLOTS. A script that meets a slot being moved
follows the cluster's redirections, which all mean the script did not run, so
sending it again cannot count twice:

- MOVED: the slot has a new owner; the map learns it (and is read again in
  the background) and the script goes there;
- ASK: the slot is being migrated and the keys are on the target: ASKING and
  the script go to the target in one write (the map stays as it is);
- TRYAGAIN: the slot is mid-migration and the script's keys are split
  between the nodes (or not all there yet): try again shortly, until
  `timeout`;
- CLUSTERDOWN: the slot has no owner right now: read the map, try again.

A connection lost while a script was in flight raises ConnectionError, as on
a single Redis (the script may have run: it is never sent twice); the map is
read again before the next call to that slot.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time

from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from shared.script_runner import LuaScript, ScriptRunner

SLOTS = 16384
_MAX_HOPS = 10_000  # redirections of one call (`timeout` ends it first)


class ClusterScriptRunner:
    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        """`url` names one node of the cluster (its user and password serve them all)."""
        self._url = url
        self._timeout = timeout
        seed = ScriptRunner(url, timeout=timeout)
        self._auth = {k: v for k, v in seed._options.items() if k in ("username", "password")}
        host = seed._options.get("host", "localhost")
        self._seeds = [f"{host}:{seed._options.get('port', 6379)}"]
        self._nodes: dict[str, ScriptRunner] = {self._seeds[0]: seed}
        self._slots: list[str | None] = [None] * SLOTS
        self._loaded = False
        self._refreshing: asyncio.Task | None = None
        self._closing: set[asyncio.Task] = set()
        self._lock = asyncio.Lock()
        self.redirections: collections.Counter[str] = collections.Counter()  # by kind

    async def run(self, script: LuaScript, keys: list[str], args: list[str]) -> object:
        slot = key_slot(keys[0].encode())
        if not self._loaded:
            await self._ensure_loaded()
        address = self._slots[slot]
        asking = False
        deadline = time.monotonic() + self._timeout
        for hop in range(_MAX_HOPS):
            if address is None:
                await self.refresh()
                address = self._slots[slot]
                if address is None:
                    raise RedisConnectionError(f"no Redis Cluster node serves slot {slot}")
            node = self._node(address)
            try:
                if asking:
                    return await node.run_asking(script, keys, args)
                return await node.run(script, keys, args)
            except RedisConnectionError:
                self._forget(address)
                raise
            except ResponseError as exc:
                message = str(exc)
                kind = message.split(" ", 1)[0]
                if kind not in ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"):
                    raise
                if time.monotonic() > deadline:
                    raise
                self.redirections[kind] += 1
                if kind == "MOVED":
                    _, moved_slot, address = message.split()
                    self._slots[int(moved_slot)] = address
                    self._refresh_soon()
                    asking = False
                elif kind == "ASK":
                    address, asking = message.split()[2], True
                else:  # keys split mid-migration, or the slot has no owner now
                    await asyncio.sleep(0.005 if kind == "TRYAGAIN" else 0.1)
                    if kind == "CLUSTERDOWN":
                        await self.refresh()
                    address, asking = self._slots[slot], False
                if hop % 8 == 7:  # nodes that disagree for a moment: do not spin
                    await asyncio.sleep(0.01)
        raise ResponseError(f"too many cluster redirections for slot {slot}")

    def _node(self, address: str) -> ScriptRunner:
        node = self._nodes.get(address)
        if node is None:
            host, port = address.rsplit(":", 1)
            auth = ""
            if self._auth.get("password"):
                user = self._auth.get("username") or ""
                auth = f"{user}:{self._auth['password']}@"
            url = f"redis://{auth}{host}:{port}/0"
            node = self._nodes[address] = ScriptRunner(url, timeout=self._timeout)
        return node

    def _forget(self, address: str) -> None:
        """A node went away: its connection is dropped and the map read again."""
        self._loaded = False
        node = self._nodes.pop(address, None)
        if node is not None:
            task = asyncio.get_running_loop().create_task(node.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _refresh_soon(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self.refresh())

    async def _ensure_loaded(self) -> None:
        async with self._lock:
            if not self._loaded:
                await self._read_slots()

    async def refresh(self) -> None:
        """Read the slot map (CLUSTER SLOTS) again."""
        async with self._lock:
            await self._read_slots()

    async def _read_slots(self) -> None:
        """From the first node that answers."""
        candidates = [*dict.fromkeys([*self._seeds, *self._nodes])]
        error: Exception | None = None
        for address in candidates:
            try:
                answer = await self._node(address).command("CLUSTER", "SLOTS")
            except (RedisConnectionError, ResponseError, OSError) as exc:
                error = exc
                continue
            slots: list[str | None] = [None] * SLOTS
            host_of_answer = address.rsplit(":", 1)[0]
            for start, end, master, *_ in answer:  # type: ignore[union-attr]
                host = master[0].decode() if master[0] else host_of_answer
                owner = f"{host}:{int(master[1])}"
                slots[int(start) : int(end) + 1] = [owner] * (int(end) - int(start) + 1)
            self._slots = slots
            self._seeds = [*dict.fromkeys([*self._seeds, *filter(None, set(slots))])]
            self._loaded = True
            return
        raise RedisConnectionError(f"no Redis Cluster node answers: {error}")

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._refreshing
        for node in list(self._nodes.values()):
            await node.close()
        self._nodes.clear()
