"""The dump file's format: one stream of checksummed frames, to disk or through a pipe.

Layout, little endian::

    file header  magic b"VZCPT\\0\\r\\n" (8) | u32 format version | u32 reserved (0)
    frame        u32 kind | u32 flags | u64 stored_len | u64 raw_len
                 | u64 xxh3-64 of the stored payload | u32 crc32 of the 32 bytes before
                 then stored_len bytes of payload
    kinds        1 RECORD  payload: schema.encode() bytes
                 2 PAGES   payload: u64 owner (pid) | u64 address | page bytes
                 3 END     payload: u64 frames before it | u64 page bytes | u64 pages
    flags        bit 0: payload is one zstd frame of raw_len bytes

The END frame is written only by a successful `DumpWriter.close()`, so a dump
cut short (a full disk, a broken ssh pipe, a crashed dumper) is recognised as
incomplete. The magic contains \\0 and \\r\\n so text-mode mangling shows.

Speed: pages travel as large runs; the writer hands them to `writev` beside
their frame header (no copy of the page data), the reader maps the file and
gives out memoryviews into the mapping. xxh3 runs at memory speed.
"""

from __future__ import annotations

import struct
import zlib

MAGIC = b"VZCPT\x00\r\n"
VERSION = 1
KIND_RECORD, KIND_PAGES, KIND_END = 1, 2, 3
FLAG_ZSTD = 1
PAGE_SIZE = 4096
MAX_RUN = 64 << 20  # page bytes per PAGES frame: bounds memory when decompressing
MAX_RECORD = 256 << 20  # bounds memory for a corrupt or hostile raw_len

FILE_HEADER = struct.Struct("<8sII")
HEAD = struct.Struct("<IIQQQ")
CRC = struct.Struct("<I")
FRAME_HEADER = HEAD.size + CRC.size
PREFIX = struct.Struct("<QQ")
END = struct.Struct("<QQQ")
KIND_NAMES = {KIND_RECORD: "RECORD", KIND_PAGES: "PAGES", KIND_END: "END"}


def frame_header(kind: int, flags: int, stored_len: int, raw_len: int, checksum: int) -> bytes:
    head = HEAD.pack(kind, flags, stored_len, raw_len, checksum)
    return head + CRC.pack(zlib.crc32(head))
