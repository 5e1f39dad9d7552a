"""Content-Encoding decoding: every coding round-trips, the limit is exact, bombs stop near
the limit in memory, and broken or unknown input fails with the message a client reads."""

from __future__ import annotations

import functools
import gzip
import struct
import time
import tracemalloc
import zlib
from collections.abc import Callable

import brotli
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.decompress import BadEncoding, DecompressError, TooLarge, decompress

MiB = 1024 * 1024
PAYLOAD = b'{"message": "connection refused", "level": "error"}\n' * 200


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


# (Content-Encoding, compressor): one row per way a client may legitimately encode.
CODECS: list[tuple[str, Callable[[bytes], bytes]]] = [
    ("gzip", gzip.compress),
    ("x-gzip", gzip.compress),
    ("deflate", zlib.compress),
    ("deflate", raw_deflate),
    ("br", brotli.compress),
    ("zstd", zstd),
]
CODEC_IDS = ["gzip", "x-gzip", "deflate-zlib", "deflate-raw", "br", "zstd"]


@pytest.mark.parametrize(("encoding", "compress"), CODECS, ids=CODEC_IDS)
def test_round_trip(encoding: str, compress: Callable[[bytes], bytes]) -> None:
    assert decompress(compress(PAYLOAD), encoding, MiB) == PAYLOAD


@pytest.mark.parametrize(("encoding", "compress"), CODECS, ids=CODEC_IDS)
def test_empty_payload_round_trips(encoding: str, compress: Callable[[bytes], bytes]) -> None:
    assert decompress(compress(b""), encoding, 0) == b""


@pytest.mark.parametrize("encoding", [None, "", "identity", " Identity ", "identity, identity"])
def test_identity_passes_body_through(encoding: str | None) -> None:
    assert decompress(PAYLOAD, encoding, len(PAYLOAD)) == PAYLOAD


@pytest.mark.parametrize("encoding", ["GZIP", " gzip ", "Gzip\t", "gzip, identity", "gzip,"])
def test_names_are_case_and_space_insensitive(encoding: str) -> None:
    assert decompress(gzip.compress(PAYLOAD), encoding, MiB) == PAYLOAD


@pytest.mark.parametrize(("encoding", "body"), [
    ("gzip, br", brotli.compress(gzip.compress(PAYLOAD))),
    ("br,gzip", gzip.compress(brotli.compress(PAYLOAD))),
    ("deflate, zstd, identity", zstd(zlib.compress(PAYLOAD))),
    ("zstd , gzip , br", brotli.compress(gzip.compress(zstd(PAYLOAD)))),
])
def test_stacked_encodings_are_undone_right_to_left(encoding: str, body: bytes) -> None:
    assert decompress(body, encoding, MiB) == PAYLOAD


def test_stacked_encodings_in_the_wrong_order_fail() -> None:
    with pytest.raises(BadEncoding, match=r"^gzip: invalid data: "):
        decompress(brotli.compress(gzip.compress(PAYLOAD)), "br, gzip", MiB)


@pytest.mark.parametrize(("encoding", "compress"), CODECS, ids=CODEC_IDS)
def test_limit_is_inclusive(encoding: str, compress: Callable[[bytes], bytes]) -> None:
    body = compress(PAYLOAD)
    assert decompress(body, encoding, len(PAYLOAD)) == PAYLOAD
    with pytest.raises(TooLarge) as error:
        decompress(body, encoding, len(PAYLOAD) - 1)
    assert str(error.value) == f"decompressed body exceeds {len(PAYLOAD) - 1} bytes"
    assert error.value.limit == len(PAYLOAD) - 1


def test_identity_body_over_limit_is_too_large() -> None:
    assert decompress(b"abc", None, 3) == b"abc"
    with pytest.raises(TooLarge, match=r"^decompressed body exceeds 2 bytes$"):
        decompress(b"abc", "identity", 2)


def test_limit_applies_to_every_stacked_stage() -> None:
    body = brotli.compress(gzip.compress(PAYLOAD))
    assert decompress(body, "gzip, br", len(PAYLOAD)) == PAYLOAD
    with pytest.raises(TooLarge):
        decompress(body, "gzip, br", len(PAYLOAD) - 1)


def test_error_hierarchy_and_message() -> None:
    assert issubclass(TooLarge, DecompressError)
    assert issubclass(BadEncoding, DecompressError)
    assert issubclass(DecompressError, ValueError)
    assert str(TooLarge(16777216)) == "decompressed body exceeds 16777216 bytes"


@pytest.mark.parametrize(("encoding", "message"), [
    ("lzma", "unsupported Content-Encoding 'lzma'"),
    (" LZMA ", "unsupported Content-Encoding 'lzma'"),
    ("compress", "unsupported Content-Encoding 'compress'"),
    ("gzip, xz", "unsupported Content-Encoding 'xz'"),
    ("br;q=1", "unsupported Content-Encoding 'br;q=1'"),
])
def test_unknown_encoding(encoding: str, message: str) -> None:
    with pytest.raises(BadEncoding) as error:
        decompress(gzip.compress(PAYLOAD), encoding, MiB)
    assert str(error.value) == message


TRUNCATIONS: dict[str, Callable[[bytes], bytes]] = {
    "empty": lambda body: b"",
    "first byte": lambda body: body[:1],
    "five bytes": lambda body: body[:5],
    "half": lambda body: body[:len(body) // 2],
    "no trailer": lambda body: body[:-4],
    "last byte": lambda body: body[:-1],
}


@pytest.mark.parametrize(("encoding", "compress"), CODECS, ids=CODEC_IDS)
@pytest.mark.parametrize("truncate", TRUNCATIONS.values(), ids=TRUNCATIONS.keys())
def test_truncated_stream_is_an_error(encoding: str, compress: Callable[[bytes], bytes],
                                      truncate: Callable[[bytes], bytes]) -> None:
    name = "gzip" if encoding == "x-gzip" else encoding
    with pytest.raises(BadEncoding) as error:
        decompress(truncate(compress(PAYLOAD)), encoding, MiB)
    assert str(error.value) == f"{name}: truncated stream"


@pytest.mark.parametrize(("encoding", "body", "message"), [
    ("gzip", b"not gzip at all",
     "gzip: invalid data: Error -3 while decompressing data: incorrect header check"),
    ("gzip", gzip.compress(PAYLOAD) + b"junk", "gzip: trailing data after the end of the stream"),
    ("deflate", zlib.compress(PAYLOAD) + b"junk",
     "deflate: trailing data after the end of the stream"),
    ("deflate", raw_deflate(PAYLOAD) + b"junk",
     "deflate: trailing data after the end of the stream"),
    ("deflate", b"\xff" * 16,
     "deflate: invalid data: Error -3 while decompressing data: invalid block type"),
    ("br", b"\xff" * 16, "br: invalid data: brotli: decoder failed"),
    ("br", brotli.compress(PAYLOAD) + b"junk", "br: invalid data: brotli: decoder failed"),
    ("zstd", b"\xff" * 16, "zstd: invalid data: zstd decompressor error: Unknown frame descriptor"),
    ("zstd", zstd(PAYLOAD) + b"junk",
     "zstd: invalid data: zstd decompressor error: Unknown frame descriptor"),
])
def test_corrupt_data(encoding: str, body: bytes, message: str) -> None:
    with pytest.raises(BadEncoding) as error:
        decompress(body, encoding, MiB)
    assert str(error.value) == message


def test_corrupt_gzip_checksum_is_an_error() -> None:
    body = bytearray(gzip.compress(PAYLOAD))
    body[-8] ^= 0xFF  # first byte of the CRC32 trailer
    with pytest.raises(BadEncoding, match=r"^gzip: invalid data: .*incorrect data check"):
        decompress(bytes(body), "gzip", MiB)


def test_gzip_members_concatenate_and_zero_padding_is_ignored() -> None:
    body = gzip.compress(b"first ") + gzip.compress(b"second") + b"\0" * 10
    assert decompress(body, "gzip", MiB) == b"first second"


def test_zstd_frames_concatenate_and_skippable_frames_are_ignored() -> None:
    skippable = b"\x50\x2a\x4d\x18" + struct.pack("<I", 3) + b"abc"
    body = skippable + zstd(b"first ") + skippable + zstd(b"second")
    assert decompress(body, "zstd", MiB) == b"first second"


def test_zstd_window_over_8_mib_is_refused() -> None:
    # RFC 9659 caps the window of zstd Content-Encoding; a larger one is refused up front.
    def frame(window_log: int) -> bytes:
        params = zstandard.ZstdCompressionParameters(window_log=window_log)
        compressor = zstandard.ZstdCompressor(compression_params=params).compressobj()
        return compressor.compress(PAYLOAD) + compressor.flush()

    assert decompress(frame(23), "zstd", MiB) == PAYLOAD
    with pytest.raises(BadEncoding, match="Frame requires too much memory"):
        decompress(frame(24), "zstd", MiB)


def _zlib_bomb(wbits: int, mib: int) -> bytes:
    """mib MiB of zeros as one valid stream, without deflating all of it: after a full
    flush the compressor's output for the same input repeats byte for byte."""
    chunk = bytes(MiB)
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    head = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    segment = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    body = head + segment * (mib - 1) + b"\x03\x00"  # then an empty final block
    if wbits > 16:
        crc = 0
        for _ in range(mib):
            crc = zlib.crc32(chunk, crc)
        body += struct.pack("<II", crc, mib * MiB & 0xFFFFFFFF)
    elif wbits > 0:
        adler = 1
        for _ in range(mib):
            adler = zlib.adler32(chunk, adler)
        body += struct.pack(">I", adler)
    return body


@functools.cache
def bomb(kind: str, mib: int) -> bytes:
    chunk = bytes(MiB)
    if kind == "gzip":
        return _zlib_bomb(16 + zlib.MAX_WBITS, mib)
    if kind == "deflate-zlib":
        return _zlib_bomb(zlib.MAX_WBITS, mib)
    if kind == "deflate-raw":
        return _zlib_bomb(-zlib.MAX_WBITS, mib)
    if kind == "br":
        compressor = brotli.Compressor(quality=1)
        return b"".join([compressor.process(chunk) for _ in range(mib)] + [compressor.finish()])
    compressor = zstandard.ZstdCompressor(level=1).compressobj()
    return b"".join([compressor.compress(chunk) for _ in range(mib)] + [compressor.flush()])


BOMBS = [("gzip", "gzip"), ("deflate-zlib", "deflate"), ("deflate-raw", "deflate"),
         ("br", "br"), ("zstd", "zstd")]


@pytest.mark.parametrize(("kind", "encoding"), BOMBS, ids=[kind for kind, _ in BOMBS])
def test_bomb_builder_makes_valid_streams(kind: str, encoding: str) -> None:
    assert decompress(bomb(kind, 8), encoding, 8 * MiB) == bytes(8 * MiB)


@pytest.mark.parametrize(("kind", "encoding"), BOMBS, ids=[kind for kind, _ in BOMBS])
def test_bomb_stops_at_the_limit_in_time_and_memory(kind: str, encoding: str) -> None:
    body = bomb(kind, 1024)  # 1 GiB of zeros
    assert len(body) < 2 * MiB
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(TooLarge, match=r"^decompressed body exceeds 1048576 bytes$"):
            decompress(body, encoding, MiB)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * MiB
    assert elapsed < 2.0  # decoding the whole GiB would take several seconds


def _mutations(encoding: str, compress: Callable[[bytes], bytes]) -> st.SearchStrategy[bytes]:
    """Valid streams with a byte flipped or cut short: random bytes rarely pass the header."""
    def mutate(payload: bytes, where: float, flip: int, cut: bool) -> bytes:
        body = bytearray(compress(payload))
        index = int(where * (len(body) - 1))
        if cut:
            return bytes(body[:index])
        body[index] ^= flip
        return bytes(body)

    return st.builds(mutate, st.binary(max_size=300), st.floats(0, 1),
                     st.integers(1, 255), st.booleans())


@pytest.mark.parametrize(("encoding", "compress"), CODECS, ids=CODEC_IDS)
def test_fuzz_decodes_or_raises_decompress_error(encoding: str,
                                                 compress: Callable[[bytes], bytes]) -> None:
    @settings(max_examples=150, deadline=None)
    @given(st.one_of(st.binary(max_size=200), _mutations(encoding, compress)),
           st.integers(0, 4096))
    def check(body: bytes, limit: int) -> None:
        try:
            result = decompress(body, encoding, limit)
        except DecompressError:
            return
        assert len(result) <= limit

    check()
