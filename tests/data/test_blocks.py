"""Line-aligned byte ranges and blocks: every line read exactly once, by one part."""

import random

from torchrec_rankmixer.data.blocks import Block, byte_range, read_blocks


def test_parts_and_blocks_cover_every_line_once(tmp_path):
    rng = random.Random(0)
    lines = [("x" * rng.randint(0, 300)).encode() for _ in range(200)]
    lines[7] = b"y" * 5000  # longer than a block
    p = tmp_path / "f.txt"
    p.write_bytes(b"\n".join(lines))  # no final newline
    for parts in (1, 2, 3, 7, 64):
        got = []
        for part in range(parts):
            start, end = byte_range(str(p), part, parts)
            for block in read_blocks(str(p), start, end, 1000):
                assert block.data[-1:] == b"\n" or block.offset + len(block.data) == p.stat().st_size
                got.extend(bytes(block.data).split(b"\n")[:-1] if bytes(block.data).endswith(b"\n")
                           else bytes(block.data).split(b"\n"))
        assert got == lines


def test_first_line_number(tmp_path):
    p = tmp_path / "f.txt"
    p.write_bytes(b"a\nb\nc\nd\n")
    assert Block(str(p), 4, b"c\nd\n").first_line_number() == 3
