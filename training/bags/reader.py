"""Reading rosbag2 bags without ROS: message types, image decoding, and damaged bags.

`BagSource` streams an intact bag (MCAP or sqlite3) through `rosbags` on every pass; a bag a
crashed recorder left behind (no `metadata.yaml`, an MCAP file without summary or footer, a
cut-off sqlite file) is salvaged once: every complete record is read, including the messages
of a partly written MCAP chunk, and a warning says so. The package's message types are parsed
from its .msg files (`make_typestore`). Images decode through the ROS layer's numpy
conversions (`vsre_ros.ros.conversions`, which imports no rclpy).
"""

from __future__ import annotations

import io
import sqlite3
import struct
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

PACKAGE = "vsre_ros"
IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
QUERY_TYPE = f"{PACKAGE}/msg/SpatialQuery"
ANSWER_TYPE = f"{PACKAGE}/msg/SpatialAnswer"
CORRECTION_TYPE = f"{PACKAGE}/msg/SpatialCorrection"
TRUTH_TYPE = f"{PACKAGE}/msg/SceneTruth"
DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")


class BagError(RuntimeError):
    """A bag (or every bag given) could not be read at all."""


# --------------------------------------------------------------------------------------------
# Message types


def project_msg_dirs() -> list[Path]:
    """Folders that hold this package's .msg files: the source tree, then the installed share."""
    here = Path(__file__).resolve()
    candidates = [here.parents[2] / "msg", Path(sys.prefix) / "share" / PACKAGE / "msg"]
    return [path for path in candidates if path.is_dir() and any(path.glob("*.msg"))]


def project_types(msg_dirs: Iterable[Path] | None = None) -> dict:
    """The package's message types parsed from .msg text, ready for `Typestore.register`.

    The first folder that defines a type wins, so a source checkout's edited .msg files take
    precedence over an older installed copy.
    """
    from rosbags.typesys import get_types_from_msg

    dirs = project_msg_dirs() if msg_dirs is None else [Path(d) for d in msg_dirs]
    types: dict = {}
    for folder in dirs:
        for path in sorted(folder.glob("*.msg")):
            name = f"{PACKAGE}/msg/{path.stem}"
            if name not in types:
                types.update(get_types_from_msg(path.read_text(), name))
    if not types:
        raise BagError(
            f"no {PACKAGE} .msg files found (looked in {', '.join(map(str, dirs)) or 'nothing'}); "
            "run from a source checkout or install the package"
        )
    return types


def make_typestore(msg_dirs: Iterable[Path] | None = None):
    """A ROS 2 Kilted typestore with this package's messages registered."""
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    store.register(project_types(msg_dirs))
    return store


# --------------------------------------------------------------------------------------------
# Images: the ROS layer's numpy conversions (vsre_ros.ros.conversions imports no rclpy), plus
# what a dataset needs on top: depth in metres and image_transport's compressedDepth.


def decode_image(msg) -> np.ndarray:
    """A `sensor_msgs/Image` as HxWx3 uint8 RGB, or HxW float32 metres for depth encodings.

    Honours `step` padding and `is_bigendian`; raises ValueError naming what is wrong.
    """
    from vsre_ros.ros.conversions import imgmsg_to_numpy

    encoding = str(msg.encoding)
    if encoding in ("16UC1", "mono16"):
        return imgmsg_to_numpy(msg).astype(np.float32) / 1000.0  # REP 118: millimetres
    if encoding == "32FC1":
        return np.array(imgmsg_to_numpy(msg), dtype=np.float32)
    return np.array(imgmsg_to_numpy(msg, desired_encoding="rgb8"))  # owns its memory


def decode_compressed(msg) -> np.ndarray:
    """A `sensor_msgs/CompressedImage` (JPEG/PNG, or compressedDepth PNG) as decode_image does."""
    from vsre_ros.ros.conversions import compressed_imgmsg_to_numpy

    fmt = str(msg.format)
    if "compresseddepth" in fmt.lower():
        # image_transport's compressedDepth puts a 12-byte config header before the PNG.
        data = bytes(memoryview(msg.data))
        start = data.find(b"\x89PNG")
        if start < 0:
            raise ValueError(f"compressedDepth image without PNG data (format {fmt!r})")
        depth = np.asarray(PILImage.open(io.BytesIO(data[start:])))
        return depth.astype(np.float32) / (1000.0 if depth.dtype != np.float32 else 1.0)
    return compressed_imgmsg_to_numpy(msg, desired_encoding="rgb8")


# --------------------------------------------------------------------------------------------
# Reading bags, including damaged ones

_MCAP_MAGIC = b"\x89MCAP0\r\n"


@dataclass
class RawMessage:
    """One serialized message as stored in a bag."""

    topic: str  # topic name
    msgtype: str  # ROS type name, e.g. sensor_msgs/msg/Image
    log_time: int  # recording time, ns
    data: bytes  # CDR bytes
    msgdef: str = ""  # embedded .msg definition, when the bag carries one


def register_embedded(store, msgtype: str, msgdef: str) -> None:
    """Teach the typestore a type the bag describes but the store does not know."""
    from rosbags.typesys import get_types_from_msg

    if msgtype in store.types or not msgdef:
        return
    try:
        store.register(get_types_from_msg(msgdef, msgtype))
    except Exception:  # a definition we cannot parse: the messages are reported as undecodable
        pass


def _read_intact(path: Path, topics: set[str] | None = None) -> Iterator[RawMessage]:
    from rosbags.interfaces import MessageDefinitionFormat
    from rosbags.rosbag2 import Reader

    with Reader(path) as reader:
        wanted = [c for c in reader.connections if topics is None or c.topic in topics]
        for conn, timestamp, data in reader.messages(connections=wanted):
            msgdef = conn.msgdef.data if conn.msgdef.format == MessageDefinitionFormat.MSG else ""
            yield RawMessage(conn.topic, conn.msgtype, timestamp, bytes(data), msgdef)


def _read_string(buf: bytes, pos: int) -> tuple[str, int]:
    (size,) = struct.unpack_from("<I", buf, pos)
    end = pos + 4 + size
    if end > len(buf):
        raise struct.error("string runs past the end")
    return buf[pos + 4 : end].decode(), end


def _decompress_partial(data: bytes, compression: str) -> bytes:
    if compression == "":
        return data
    if compression == "zstd":
        import zstandard

        # A stream decompressor returns what it can of a cut-off frame.
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    if compression == "lz4":
        import lz4.frame

        return lz4.frame.LZ4FrameDecompressor().decompress(data)
    raise ValueError(f"unsupported MCAP chunk compression {compression!r}")


def _scan_mcap_records(buf: bytes, state: dict, out: list[RawMessage]) -> bool:
    """Parse MCAP records from `buf`, tolerating a cut at any byte; True if the buffer was cut."""
    pos = 0
    while pos < len(buf):
        if pos + 9 > len(buf):
            return True
        opcode = buf[pos]
        (length,) = struct.unpack_from("<Q", buf, pos + 1)
        body = buf[pos + 9 : pos + 9 + length]
        cut = len(body) < length
        pos += 9 + length
        try:
            if opcode == 0x03:  # Schema
                (schema_id,) = struct.unpack_from("<H", body, 0)
                name, p = _read_string(body, 2)
                _encoding, p = _read_string(body, p)
                (size,) = struct.unpack_from("<I", body, p)
                text = body[p + 4 : p + 4 + size].decode()
                state["schemas"][schema_id] = (name, text)
            elif opcode == 0x04:  # Channel
                channel_id, schema_id = struct.unpack_from("<HH", body, 0)
                topic, _ = _read_string(body, 4)
                state["channels"][channel_id] = (topic, schema_id)
            elif opcode == 0x05 and not cut:  # Message
                channel_id, _seq, log_time, _pub = struct.unpack_from("<HIQQ", body, 0)
                topic, schema_id = state["channels"].get(channel_id, ("", 0))
                name, text = state["schemas"].get(schema_id, ("", ""))
                if topic:
                    out.append(RawMessage(topic, name, log_time, bytes(body[22:]), text))
            elif opcode == 0x06:  # Chunk
                compression, p = _read_string(body, 28)
                (size,) = struct.unpack_from("<Q", body, p)
                records = _decompress_partial(body[p + 8 : p + 8 + size], compression)
                cut = _scan_mcap_records(records, state, out) or cut
            elif opcode in (0x02, 0x0F):  # Footer, DataEnd: the data section is over
                return cut
        except (struct.error, UnicodeDecodeError, ValueError, ImportError):
            return True
        if cut:
            return True
    return False


def _salvage_mcap(path: Path) -> tuple[list[RawMessage], bool]:
    buf = path.read_bytes()
    if not buf.startswith(_MCAP_MAGIC):
        raise BagError(f"{path} is not an MCAP file (bad magic)")
    if len(buf) < 2 * len(_MCAP_MAGIC):
        # The magic alone (or the magic and a few bytes): not a finished empty MCAP, which
        # still has a header, a footer and a closing magic; no record survived.
        return [], True
    out: list[RawMessage] = []
    cut = _scan_mcap_records(buf[len(_MCAP_MAGIC) :], {"schemas": {}, "channels": {}}, out)
    out.sort(key=lambda m: m.log_time)
    return out, cut or not buf.endswith(_MCAP_MAGIC)


_SQLITE_HEADER = 100  # bytes of the sqlite file header


def _salvage_sqlite(path: Path) -> tuple[list[RawMessage], bool]:
    """Read rows from a sqlite3 bag whose file was cut short.

    SQLite refuses a file shorter than its header claims, so a copy gets its page count
    rewritten to the pages actually present; rows on missing pages are lost, the rest read.
    """
    raw = bytearray(path.read_bytes())
    if not raw.startswith(b"SQLite format 3\x00"):
        raise BagError(f"{path} is not a sqlite3 file")
    if len(raw) < _SQLITE_HEADER:
        raise BagError(
            f"{path}: sqlite file cut inside its {_SQLITE_HEADER}-byte header "
            f"({len(raw)} bytes); nothing to salvage"
        )
    (page_size,) = struct.unpack_from(">H", raw, 16)
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        raise BagError(f"{path}: sqlite header names an invalid page size {page_size}")
    pages = len(raw) // page_size
    if pages == 0:
        raise BagError(
            f"{path}: sqlite file cut inside its first page ({len(raw)} of {page_size} "
            "bytes: the table of topics is lost); nothing to salvage"
        )
    (claimed,) = struct.unpack_from(">I", raw, 28)
    cut = claimed > pages or len(raw) % page_size != 0
    del raw[pages * page_size :]
    struct.pack_into(">I", raw, 28, pages)
    out: list[RawMessage] = []
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "salvage.db3"
        copy.write_bytes(bytes(raw))
        try:
            con = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
        except sqlite3.Error as err:
            raise BagError(f"{path}: sqlite bag does not open even after repair: {err}") from None
        try:
            topics = {
                row[0]: (row[1], row[2])
                for row in con.execute("SELECT id, name, type FROM topics")
            }
            msgdefs: dict[str, str] = {}
            try:
                for name, encoding, text in con.execute(
                    "SELECT topic_type, encoding, encoded_message_definition "
                    "FROM message_definitions"
                ):
                    if encoding == "ros2msg":
                        msgdefs[name] = text
            except sqlite3.DatabaseError:
                pass
            rows: dict[int, tuple] = {}
            try:
                for row in con.execute("SELECT id, topic_id, timestamp, data FROM messages"):
                    rows[row[0]] = row
            except sqlite3.DatabaseError:
                cut = True
            # Past the first unreadable page, single-row lookups still reach rows elsewhere.
            misses, row_id = 0, max(rows, default=0) + 1
            while misses < 256:
                try:
                    row = con.execute(
                        "SELECT id, topic_id, timestamp, data FROM messages WHERE id = ?",
                        (row_id,),
                    ).fetchone()
                except sqlite3.DatabaseError:
                    row = None
                if row is None:
                    misses += 1
                else:
                    misses, rows[row_id] = 0, row
                row_id += 1
        except sqlite3.Error as err:
            raise BagError(f"{path}: sqlite bag unreadable even after repair: {err}") from None
        finally:
            con.close()
    for _id, topic_id, timestamp, data in sorted(rows.values(), key=lambda r: (r[2], r[0])):
        if topic_id in topics:
            name, msgtype = topics[topic_id]
            out.append(RawMessage(name, msgtype, timestamp, bytes(data), msgdefs.get(msgtype, "")))
    return out, cut


class BagSource:
    """One bag (a rosbag2 directory, or a bare .mcap/.db3 file) that can be read more than once.

    An intact bag streams from `rosbags` on every pass, so ingestion holds one message at a
    time (plus what it decides to keep). A damaged bag is salvaged once, into memory, and
    what happened is appended to `notes` and warned about. A bag that cannot be read at all
    raises BagError naming why; nothing else escapes the constructor.
    """

    def __init__(self, path: Path | str, notes: list[str]):
        from rosbags.rosbag2 import ReaderError

        self.path = path = Path(path)
        self.notes = notes
        self._salvaged: list[RawMessage] | None = None
        if not path.exists():
            raise BagError(f"bag {path} does not exist")
        reason = ""
        if path.is_dir() and (path / "metadata.yaml").exists():
            try:
                with _open_reader(path):
                    return
            except ReaderError as err:
                reason = str(err)
            except Exception as err:  # rosbags raises more than ReaderError on odd files
                reason = f"{type(err).__name__}: {err}"
        elif path.is_dir():
            reason = "metadata.yaml is missing (the recorder did not shut down cleanly)"
        self.salvage(reason)

    def salvage(self, reason: str = "") -> None:
        """Read every complete record of the storage files into memory (damaged bags)."""
        path = self.path
        files = (
            [path]
            if path.is_file()
            else sorted(p for p in path.iterdir() if p.suffix in (".mcap", ".db3"))
        )
        if not files:
            raise BagError(f"{path}: no .mcap or .db3 storage files found")
        messages: list[RawMessage] = []
        damaged = False
        for file in files:
            salvage = _salvage_mcap if file.suffix == ".mcap" else _salvage_sqlite
            try:
                found, cut = salvage(file)
            except BagError:
                raise
            except (OSError, struct.error, ValueError, sqlite3.Error) as err:
                raise BagError(f"{file}: unreadable ({type(err).__name__}: {err})") from None
            messages.extend(found)
            damaged = damaged or cut
        messages.sort(key=lambda m: m.log_time)
        self._salvaged = messages
        if damaged or reason:
            note = f"{path}: damaged or truncated bag ({reason or 'file cut short'}); "
            note += f"salvaged {len(messages)} readable messages"
            self.notes.append(note)
            warnings.warn(note, stacklevel=3)

    @property
    def salvaged(self) -> bool:
        return self._salvaged is not None

    def messages(self, topics: set[str] | None = None) -> Iterator[RawMessage]:
        """The bag's messages in recording order, optionally only those on `topics`."""
        if self._salvaged is None:
            yield from _read_intact(self.path, topics)
        else:
            yield from (m for m in self._salvaged if topics is None or m.topic in topics)


def _open_reader(path: Path):
    from rosbags.rosbag2 import Reader

    return Reader(path)


def read_bag(path: Path | str, notes: list[str]) -> list[RawMessage]:
    """Every readable message of one bag, in a list (see BagSource for a streaming read)."""
    return list(BagSource(path, notes).messages())
