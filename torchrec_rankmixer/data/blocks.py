"""Text files as line-aligned byte blocks: the unit that the vectorised readers parse.

A file (or one rank's share of it, :func:`byte_range`) is read in blocks of about
``block_bytes`` that end at a line break, so memory is bounded by the block size, not the
file size. Line numbers (for error messages) are counted lazily, only when asked.
"""

import os
from dataclasses import dataclass
from typing import Iterator, Tuple

_SCAN = 1 << 20


def _next_line_start(f, pos: int, size: int) -> int:  # type: ignore[no-untyped-def]
    """The first line start at or after ``pos`` (``pos`` itself if it follows a line break)."""
    if pos <= 0:
        return 0
    f.seek(pos - 1)
    while True:
        chunk = f.read(_SCAN)
        if not chunk:
            return size
        i = chunk.find(b"\n")
        if i >= 0:
            return f.tell() - len(chunk) + i + 1


def byte_range(path: str, part: int, parts: int) -> Tuple[int, int]:
    """Part ``part`` of ``parts`` of a file as a line-aligned byte range ``[start, end)``.

    The ranges of parts ``0 .. parts-1`` cover every line exactly once; a line belongs to the
    part in which it starts. Each rank reads only its own range.

    Args:
        path: the file.
        part: which part, in ``[0, parts)``.
        parts: number of parts (ranks).

    Example::

        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
        ...     _ = f.write(b"aa\\nbb\\ncc\\ndd\\n")
        >>> [byte_range(f.name, p, 2) for p in range(2)]
        [(0, 6), (6, 12)]
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        start = _next_line_start(f, size * part // parts, size)
        end = _next_line_start(f, size * (part + 1) // parts, size) if part + 1 < parts else size
    return start, max(start, end)


@dataclass
class Block:
    """Whole lines of a file: ``data`` starts at byte ``offset`` of ``path``."""

    path: str
    offset: int
    data: "bytes | memoryview"

    def first_line_number(self) -> int:
        """1-based line number of the block's first line (counts the bytes before it; called
        only to name the place of a malformed row)."""
        count, done = 0, 0
        if self.offset == 0:
            return 1
        with open(self.path, "rb") as f:
            while done < self.offset:
                chunk = f.read(min(1 << 24, self.offset - done))
                if not chunk:
                    break
                count += chunk.count(b"\n")
                done += len(chunk)
        return count + 1


def read_blocks(path: str, start: int, end: int, block_bytes: int) -> Iterator[Block]:
    """Blocks of whole lines covering ``[start, end)`` of ``path``, each about
    ``block_bytes`` long (longer only for a single longer line).

    Example::

        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile("wb", delete=False) as f:
        ...     _ = f.write(b"a\\nbb\\nccc\\n")
        >>> [bytes(b.data) for b in read_blocks(f.name, 0, 9, 4)]
        [b'a\\n', b'bb\\n', b'ccc\\n']
    """
    with open(path, "rb") as f:
        f.seek(start)
        pos, carry = start, b""
        while pos < end or carry:
            want = max(min(block_bytes, end - pos), 0)
            buf = bytearray(len(carry) + want)
            buf[:len(carry)] = carry
            got = f.readinto(memoryview(buf)[len(carry):]) if want else 0
            pos += got
            data = memoryview(buf)[:len(carry) + got]
            if pos >= end or got < want:
                if len(data):
                    yield Block(path, pos - len(data), data)
                return
            cut = buf.rfind(b"\n", 0, len(data))
            if cut < 0:
                carry = bytes(data)  # one line longer than the block: read on
                continue
            yield Block(path, pos - len(data), data[:cut + 1])
            carry = bytes(data[cut + 1:])
