"""TensorBoard event files, written and trimmed with the standard library: a
file of TFRecord frames (the record's length, its masked CRC-32C, the record,
its masked CRC-32C), each record an ``Event`` protocol buffer holding one
``Summary`` of scalars. Neither TensorFlow nor tensorboardX is needed (the
latter imports PyTorch where it is installed: 4 s of every start on a CPU)."""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator, Sequence


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        for _ in range(8):
            n = (n >> 1) ^ 0x82F63B78 if n & 1 else n >> 1
        table.append(n)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """The CRC-32C (Castagnoli) checksum of `data`."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> bytes:
    crc = crc32c(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def frame(record: bytes) -> bytes:
    """`record` as one TFRecord frame."""
    length = struct.pack("<Q", len(record))
    return length + _masked_crc(length) + record + _masked_crc(record)


def frames(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """``(frame, record)`` of each whole frame of `data`, in order (a frame cut off at the end is left out)."""
    pos = 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        end = pos + 12 + length + 4
        if end > len(data):
            return
        yield data[pos:end], data[pos + 12 : end - 4]
        pos = end


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def _message(number: int, payload: bytes) -> bytes:
    """A length-delimited field (a string or a nested message)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event(step: int, scalars: Sequence[tuple[str, float]] = (), wall_time: float | None = None,
          file_version: str = "") -> bytes:  # fmt: skip
    """An ``Event`` (wall_time = 1, step = 2, file_version = 3, summary = 5)
    whose ``Summary`` holds each ``(tag, value)`` as a ``simple_value``."""
    out = b"\x09" + struct.pack("<d", time.time() if wall_time is None else wall_time) + b"\x10" + _varint(step)
    if file_version:
        out += _message(3, file_version.encode())
    if scalars:
        values = (_message(1, tag.encode()) + b"\x15" + struct.pack("<f", value) for tag, value in scalars)
        out += _message(5, b"".join(_message(1, v) for v in values))
    return out


def event_step(record: bytes) -> int:
    """The step of an ``Event`` (0 where it has none)."""
    pos = 0
    while pos < len(record):
        key, pos = _read_varint(record, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(record, pos)
            if number == 2:
                return value - (1 << 64) if value >= 1 << 63 else value
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _read_varint(record, pos)
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"not an Event: wire type {wire}")
    return 0


class EventWriter:
    """Writes scalar events to a new event file in `folder` (made if needed),
    named as TensorFlow names them, each event handed to the operating system
    as it is added (one write, no buffer to lose). Raises `OSError` where the
    file cannot be written."""

    def __init__(self, folder: str):
        os.makedirs(folder, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
        self.path = os.path.join(folder, name)
        self._file = open(self.path, "ab", buffering=0)
        self._file.write(frame(event(0, file_version="brain.Event:2")))

    def add(self, step: int, scalars: Sequence[tuple[str, float]]) -> None:
        """One event at `step` holding `scalars`, ``(tag, value)`` pairs."""
        self._file.write(frame(event(step, scalars)))

    def close(self) -> None:
        self._file.close()
