"""`serve --workers N`: each process's metric values in files that any process
sums when scraped.

The files are prometheus_client's multiprocess files (`counter_<pid>.db`,
`histogram_<pid>.db`, `gauge_livesum_<pid>.db` in `PROMETHEUS_MULTIPROC_DIR`),
so its `MultiProcessCollector` reads and sums them and `mark_process_dead`
drops a dead process's live gauge. Their layout (prometheus_client's
`MmapedDict`): a 4-byte int, the bytes used, 4 bytes of padding, then entries
of a 4-byte key length, the UTF-8 key padded to 8-byte alignment, and two
doubles, the value and a timestamp. The key is prometheus_client's
`mmap_key` JSON of the family, the sample's name, its labels and the help.

Each update writes one value's 8 bytes at a position found once per series,
a slice assignment with no lock (a proxy process is one asyncio thread), so a
scrape answered by any process counts every request another one has finished.
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import TYPE_CHECKING

from prometheus_client.mmap_dict import mmap_key
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from proxy.metrics import Family

_PREFIX = {"counter": "counter", "histogram": "histogram", "gauge": "gauge_livesum"}
_INITIAL_SIZE = 1 << 16
_INT = struct.Struct("i")
_DOUBLE = struct.Struct("d")


class _File:
    """One process's file of one type, appended to and written in place."""

    def __init__(self, path: str) -> None:
        self._f = open(path, "a+b")
        self.capacity = os.fstat(self._f.fileno()).st_size
        if self.capacity == 0:
            self._f.truncate(_INITIAL_SIZE)
            self.capacity = _INITIAL_SIZE
        self.map = mmap.mmap(self._f.fileno(), self.capacity)
        self.used = _INT.unpack_from(self.map, 0)[0] or 8
        self.map[0:4] = _INT.pack(self.used)

    def add(self, key: str) -> int:
        """A new entry at 0; the position of its value."""
        encoded = key.encode()
        padded = encoded + b" " * (8 - (len(encoded) + 4) % 8)
        entry = struct.pack(f"i{len(padded)}sdd", len(encoded), padded, 0.0, 0.0)
        while self.used + len(entry) > self.capacity:
            self.capacity *= 2
            self._f.truncate(self.capacity)
            self.map = mmap.mmap(self._f.fileno(), self.capacity)
        self.map[self.used : self.used + len(entry)] = entry
        self.used += len(entry)
        self.map[0:4] = _INT.pack(self.used)  # readers see the entry whole, or not at all
        return self.used - 16

    def close(self) -> None:
        self.map.close()
        self._f.close()


class SharedFiles:
    def __init__(self, directory: str, pid: int) -> None:
        self.directory = directory
        self.pid = pid
        self._files: dict[str, _File] = {}

    def _file(self, kind: str) -> _File:
        prefix = _PREFIX[kind]
        file = self._files.get(prefix)
        if file is None:
            path = os.path.join(self.directory, f"{prefix}_{self.pid}.db")
            file = self._files[prefix] = _File(path)
        return file

    def _slots(self, family: Family, key: tuple) -> tuple[_File, list[int]]:
        """The series' value positions: one, or a histogram's buckets then its sum."""
        names = list(family.labelnames)
        values = [str(v) for v in key]
        file = self._file(family.kind)

        def add(sample: str, names=names, values=values) -> int:
            return file.add(mmap_key(family.name, sample, names, values, family.help))

        if family.kind == "counter":
            return file, [add(f"{family.name}_total")]
        if family.kind == "gauge":
            return file, [add(family.name)]
        bounds = [floatToGoString(b) for b in family.bounds] + ["+Inf"]
        names_le = [*names, "le"]
        positions = [add(f"{family.name}_bucket", names_le, [*values, le]) for le in bounds]
        return file, [*positions, add(f"{family.name}_sum")]

    def write(self, family: Family, key: tuple, index: int, value: float) -> None:
        """The series' new value (a histogram's: bucket `index`'s count, or -1: its sum)."""
        slots = family.slots.get(key)
        if slots is None:
            slots = family.slots[key] = self._slots(family, key)
        file, positions = slots
        pos = positions[index]
        file.map[pos : pos + 8] = _DOUBLE.pack(value)  # the timestamp stays 0

    def close(self) -> None:
        for file in self._files.values():
            file.close()
        self._files.clear()
