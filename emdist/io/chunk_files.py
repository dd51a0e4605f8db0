"""Read row blocks of a local Zarr v3 array straight from its chunk files.

Zarr reads a chunk through its own event loop: a thread of the loop's pool reads the file,
the loop's single thread checks the CRC-32C and copies the decoded chunk into the block
asked for, and the calling thread waits. Every read in the process queues on that one
thread, and each read hands over between three threads. A K-means pass over a store in the
page cache spent more CPU in that path than in its kernel, and could not use more than
about 1.2 cores for it (benchmarks/README.md, "Reading chunk files directly").

For the layouts most stores have, and every store emdist writes (one array, not sharded,
whole rows per chunk, the ``bytes`` codec in little-endian order, then optionally ``zstd``
or ``blosc``, then optionally ``crc32c``), :class:`ChunkFiles` reads a block in the thread
that asks for it: one read of each chunk file into its place in the block (a compressed
chunk decodes into it), the CRC-32C checked on the bytes read. The file reads and the
decoding (numcodecs, as Zarr's own codecs call it) release the GIL, so two Dask threads
read and compute side by side.

It returns exactly what Zarr's read returns, or lets Zarr read: a chunk file that is
missing (Zarr's fill value), not a regular file, of another size than its encoding gives,
failing its CRC-32C or its decoding is read again through Zarr, which returns the fill
value or raises the error that :class:`emdist.io.integrity.CheckedReader` reports. Any
other layout is read through Zarr. Dask configuration ``emdist.direct-read`` (default
``True``) set to ``False`` reads everything through Zarr.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import zarr
from numcodecs.blosc import Blosc
from numcodecs.zstd import Zstd
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ZstdCodec
from zarr.core.chunk_grids import RegularChunkGrid
from zarr.storage import LocalStore

__all__ = ["ChunkFiles", "blosc_content_size", "zstd_content_size"]

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CRC_BYTES = 4


def zstd_content_size(frame: np.ndarray[Any, Any]) -> int | None:
    """The decoded size a Zstandard frame's header declares, or ``None`` if it declares none.

    Parameters
    ----------
    frame : numpy.ndarray of uint8
        The frame's bytes (at least its header).

    Returns
    -------
    int or None
        ``Frame_Content_Size`` (RFC 8878, section 3.1.1.1), or ``None`` for a header that
        omits it or bytes that are not a Zstandard frame.

    Notes
    -----
    numcodecs decodes into a given buffer as many bytes as the header declares, and says
    nothing when the buffer is larger: this is checked first, so that a chunk that decodes
    to fewer bytes than the block expects is never taken for a whole one.
    """
    if frame.size < 6 or bytes(frame[:4]) != _ZSTD_MAGIC:
        return None
    descriptor = int(frame[4])
    size_flag, single_segment, dict_flag = descriptor >> 6, (descriptor >> 5) & 1, descriptor & 3
    field = (1 if single_segment else 0, 2, 4, 8)[size_flag]
    if field == 0:
        return None
    at = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[dict_flag]
    if frame.size < at + field:
        return None
    size = int.from_bytes(bytes(frame[at : at + field]), "little")
    return size + 256 if field == 2 else size


def blosc_content_size(frame: np.ndarray[Any, Any]) -> int | None:
    """The decoded size a Blosc frame's header declares, or ``None`` if it is not one.

    Parameters
    ----------
    frame : numpy.ndarray of uint8
        The whole frame.

    Returns
    -------
    int or None
        The header's ``nbytes``, if its ``cbytes`` is the frame's length.
    """
    if frame.size < 16:
        return None
    header = bytes(frame[:16])
    nbytes = int.from_bytes(header[4:8], "little")
    cbytes = int.from_bytes(header[12:16], "little")
    return nbytes if cbytes == frame.size else None


def _zstd_decode(body: np.ndarray[Any, Any], out: np.ndarray[Any, Any]) -> None:
    Zstd().decode(body, out=out)


def _blosc_decode(body: np.ndarray[Any, Any], out: np.ndarray[Any, Any]) -> None:
    Blosc().decode(body, out=out)


Decoder = Callable[[np.ndarray[Any, Any], np.ndarray[Any, Any]], None]
SizeOf = Callable[[np.ndarray[Any, Any]], int | None]

# What decodes each compressor the direct read takes, and the size its header declares.
_DECODERS: dict[str, tuple[SizeOf, Decoder]] = {
    "zstd": (zstd_content_size, _zstd_decode),
    "blosc": (blosc_content_size, _blosc_decode),
}


class ChunkFiles:
    """Row blocks of one Zarr array, read from its chunk files in the calling thread.

    Build it with :meth:`of`, which says whether the array's layout allows it.

    Parameters
    ----------
    array : zarr.Array
        The array; chunks the direct read cannot take are read through it.
    folder : pathlib.Path
        The array's folder on disk.
    compressor : {"zstd", "blosc"} or None
        What the chunks are compressed with.
    checksummed : bool
        Whether each chunk file ends with the CRC-32C of what precedes it.
    """

    def __init__(
        self, array: zarr.Array[Any], folder: Path, *, compressor: str | None, checksummed: bool
    ) -> None:
        self.array = array
        self.folder = folder
        self.compressor = compressor
        self.checksummed = checksummed
        self.chunk_rows = int(array.chunks[0])
        self.n_features = int(array.shape[1])
        self.dtype = np.dtype(array.dtype).newbyteorder("<")
        self.chunk_bytes = self.chunk_rows * self.n_features * self.dtype.itemsize
        self._key = array.metadata.chunk_key_encoding.encode_chunk_key  # type: ignore[union-attr]

    @classmethod
    def of(cls, array: zarr.Array[Any]) -> ChunkFiles | None:
        """The direct reader of ``array``, or ``None`` if its layout must be read by Zarr.

        Parameters
        ----------
        array : zarr.Array

        Returns
        -------
        ChunkFiles or None
            ``None`` unless the array is a 2-d Zarr v3 array in a ``LocalStore``, not
            sharded, with whole rows in each chunk, a numeric dtype and the codecs
            ``bytes`` (little-endian), then optionally ``zstd`` or ``blosc``, then
            optionally ``crc32c``.
        """
        meta = array.metadata
        # Exactly Zarr's local store: a subclass or a wrapper may serve other bytes.
        if (
            type(array.store) is not LocalStore
            or sys.byteorder != "little"
            or meta.zarr_format != 3
            or array.ndim != 2
            or array.shards is not None
            or int(array.chunks[1]) != int(array.shape[1])
            or np.dtype(array.dtype).kind not in "fiu"
            or not isinstance(meta.chunk_grid, RegularChunkGrid)
        ):
            return None
        codecs = list(meta.codecs)
        first = codecs.pop(0) if codecs else None
        if not isinstance(first, BytesCodec) or (
            first.endian is not None and first.endian.value != "little"
        ):
            return None  # a transpose or another serializer first: Zarr's business
        compressor = None
        if codecs and isinstance(codecs[0], ZstdCodec | BloscCodec):
            compressor = "zstd" if isinstance(codecs.pop(0), ZstdCodec) else "blosc"
        checksummed = bool(codecs) and isinstance(codecs[0], Crc32cCodec)
        if checksummed:
            codecs.pop(0)
        if codecs:
            return None
        root = Path(array.store.root)
        folder = root / array.path if array.path else root
        return cls(array, folder, compressor=compressor, checksummed=checksummed)

    def read(self, start: int, stop: int) -> np.ndarray[Any, Any]:
        """Rows ``start:stop`` of the array, as Zarr would return them.

        Parameters
        ----------
        start, stop : int
            Row bounds, ``0 <= start <= stop <= n_rows``.

        Returns
        -------
        numpy.ndarray
            A new C-ordered array of shape ``(stop - start, n_features)``.
        """
        out = np.empty((stop - start, self.n_features), dtype=self.array.dtype)
        if stop <= start:
            return out
        c = self.chunk_rows
        for index in range(start // c, (stop - 1) // c + 1):
            first = index * c
            lo, hi = max(start, first), min(stop, first + c)
            into = out[lo - start : hi - start]
            if not self._read_chunk(index, lo - first, hi - first, into):
                into[...] = self.array[lo:hi]
        return out

    def _read_chunk(self, index: int, lo: int, hi: int, into: np.ndarray[Any, Any]) -> bool:
        """Rows ``lo:hi`` of chunk ``index`` into ``into``; ``False`` leaves them to Zarr."""
        path = self.folder / self._key((index, 0))
        whole = lo == 0 and hi == self.chunk_rows
        target = into.reshape(-1).view(np.uint8)
        # A whole uncompressed chunk lands in its place in the block: one copy, from the
        # page cache. Anything else is read whole first: the CRC covers it all.
        direct = whole and self.compressor is None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return False  # missing (the fill value) or unreadable: as Zarr says
        try:
            st = os.fstat(fd)
            size = st.st_size
            payload = size - _CRC_BYTES if self.checksummed else size
            if (
                not stat.S_ISREG(st.st_mode)
                or payload < 0
                or (self.compressor is None and payload != self.chunk_bytes)
            ):
                return False
            raw = target if direct else np.empty(size, np.uint8)
            tail = np.empty(_CRC_BYTES if self.checksummed and direct else 0, np.uint8)
            if _read_all(fd, [raw, tail] if tail.size else [raw]) != size:
                return False  # the file changed size while it was read
        except OSError:
            return False  # an I/O error: Zarr's read says what it is
        finally:
            os.close(fd)
        body = raw[:payload]
        if self.checksummed:
            stored = tail if direct else raw[payload:]
            if google_crc32c.value(body) != int.from_bytes(bytes(stored), "little"):
                return False
        if direct:
            return True
        if self.compressor is not None:
            content_size, decode = _DECODERS[self.compressor]
            if content_size(body) != self.chunk_bytes:
                return False
            decoded = target if whole else np.empty(self.chunk_bytes, np.uint8)
            try:
                decode(body, decoded)
            except Exception:  # noqa: BLE001 - whatever the codec raises, Zarr's read says
                return False
            if whole:
                return True
        else:
            decoded = body
        rows = decoded.view(self.dtype).reshape(self.chunk_rows, self.n_features)
        into[...] = rows[lo:hi]
        return True


def _read_all(fd: int, buffers: list[np.ndarray[Any, Any]]) -> int:
    """Fill ``buffers`` from ``fd`` in order; the bytes read (short only at end of file)."""
    total = 0
    views = [memoryview(b.data).cast("B") for b in buffers]
    while views:
        n = os.readv(fd, views)
        if n == 0:
            break
        total += n
        while views and n >= views[0].nbytes:
            n -= views[0].nbytes
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]
    # One byte more would mean the file grew after fstat: not the chunk that was sized.
    return total + len(os.read(fd, 1))
