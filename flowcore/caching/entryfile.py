"""The layout of one cache entry file, and reading and writing it.

::

    header   36 bytes, little-endian:
             magic      8s   b"FCCACHE\\x00"
             version    u16  FORMAT_VERSION
             reserved   u16  0
             meta_len   u32  length of the metadata
             data_len   u64  length of the payload
             checksum   16s  XXH3-128 digest of metadata + payload
    metadata meta_len bytes of UTF-8 JSON: key, task, created, expires
    payload  data_len bytes: the result, pickled by cloudpickle (protocol 5)

The checksum is verified before anything is unpickled, and the file must be exactly
as long as the header says: a truncated, extended or altered file is corrupt.
Listing reads the header and metadata only, never the payload (unless asked to
verify: then the checksum is computed over the payload read in chunks).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

import xxhash

MAGIC = b"FCCACHE\x00"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sHHIQ16s")
#: Metadata beyond this size is taken as corruption (it holds a key and a task name).
MAX_METADATA_BYTES = 1 << 20


class CorruptEntryError(Exception):
    """An entry file that is not a complete, intact entry of a known format."""


@dataclass(frozen=True)
class EntryMetadata:
    """The part of an entry that is readable without its payload."""

    key: str
    task: str
    created: float
    expires: float | None


def write_entry(handle: BinaryIO, metadata: EntryMetadata, payload: bytes) -> None:
    """Write a whole entry to ``handle`` (a file opened for binary writing)."""
    meta = json.dumps(
        {
            "key": metadata.key,
            "task": metadata.task,
            "created": metadata.created,
            "expires": metadata.expires,
        },
        separators=(",", ":"),
    ).encode("utf-8")
    hasher = xxhash.xxh3_128()
    hasher.update(meta)
    hasher.update(payload)
    handle.write(HEADER.pack(MAGIC, FORMAT_VERSION, 0, len(meta), len(payload), hasher.digest()))
    handle.write(meta)
    handle.write(payload)


def _read_header(handle: BinaryIO) -> tuple[int, int, bytes]:
    raw = handle.read(HEADER.size)
    if len(raw) < HEADER.size:
        raise CorruptEntryError(f"truncated header ({len(raw)} of {HEADER.size} bytes)")
    magic, version, _, meta_len, data_len, checksum = HEADER.unpack(raw)
    if magic != MAGIC:
        raise CorruptEntryError("not a flowcore cache entry (bad magic)")
    if version != FORMAT_VERSION:
        raise CorruptEntryError(f"entry format {version}, this flowcore reads {FORMAT_VERSION}")
    if meta_len > MAX_METADATA_BYTES:
        raise CorruptEntryError(f"metadata length {meta_len} is implausible")
    size = os.fstat(handle.fileno()).st_size
    expected = HEADER.size + meta_len + data_len
    if size != expected:
        raise CorruptEntryError(f"file is {size} bytes, its header says {expected}")
    return meta_len, data_len, checksum


def _parse_metadata(meta: bytes) -> EntryMetadata:
    try:
        fields = json.loads(meta.decode("utf-8"))
        key, task, created, expires = (
            fields["key"],
            fields["task"],
            fields["created"],
            fields["expires"],
        )
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise CorruptEntryError(f"unreadable metadata ({exc})") from None
    if not (
        isinstance(key, str)
        and isinstance(task, str)
        and isinstance(created, (int, float))
        and (expires is None or isinstance(expires, (int, float)))
    ):
        raise CorruptEntryError("metadata fields have the wrong types")
    return EntryMetadata(key, task, float(created), None if expires is None else float(expires))


def read_metadata(handle: BinaryIO) -> tuple[EntryMetadata, int]:
    """The metadata of the entry in ``handle`` and the file's size; payload not read."""
    meta_len, data_len, _ = _read_header(handle)
    meta = handle.read(meta_len)
    if len(meta) != meta_len:
        raise CorruptEntryError("truncated metadata")
    return _parse_metadata(meta), HEADER.size + meta_len + data_len


def verify_entry(handle: BinaryIO, chunk_size: int = 1 << 20) -> tuple[EntryMetadata, int]:
    """Like :func:`read_metadata`, and also verify the checksum of the whole entry,
    reading the payload in chunks (it is never held in memory). Raises
    :class:`CorruptEntryError` for any damage that :func:`read_entry` would find."""
    meta_len, data_len, checksum = _read_header(handle)
    meta = handle.read(meta_len)
    if len(meta) != meta_len:
        raise CorruptEntryError("truncated metadata")
    hasher = xxhash.xxh3_128()
    hasher.update(meta)
    remaining = data_len
    while remaining:
        chunk = handle.read(min(chunk_size, remaining))
        if not chunk:
            raise CorruptEntryError("truncated entry")
        hasher.update(chunk)
        remaining -= len(chunk)
    if hasher.digest() != checksum:
        raise CorruptEntryError("checksum mismatch")
    return _parse_metadata(meta), HEADER.size + meta_len + data_len


def read_entry(handle: BinaryIO) -> tuple[EntryMetadata, bytes]:
    """Metadata and payload of the entry in ``handle``, checksum verified."""
    meta_len, data_len, checksum = _read_header(handle)
    meta = handle.read(meta_len)
    payload = handle.read(data_len)
    if len(meta) != meta_len or len(payload) != data_len:
        raise CorruptEntryError("truncated entry")
    hasher = xxhash.xxh3_128()
    hasher.update(meta)
    hasher.update(payload)
    if hasher.digest() != checksum:
        raise CorruptEntryError("checksum mismatch")
    return _parse_metadata(meta), payload
