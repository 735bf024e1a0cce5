"""Read W&B offline run files (``run-<id>.wandb``) without W&B's own reader, which wandb >= 0.2x dropped.

Format (as written by wandb-core, ``core/pkg/leveldb`` and ``core/internal/transactionlog`` in wandb 0.31,
checked against files it writes):

- a 7-byte W&B header: ident ``:W&B``, magic ``0xBEE1`` (uint16 little-endian), version (uint8, 0);
- then a LevelDB log: 32 KiB blocks (the header counts towards the first one) of chunks, each with a
  7-byte header -- checksum (uint32 LE: plain IEEE CRC-32, as ``zlib.crc32``, of the type byte and the
  payload; *not* LevelDB's masked CRC-32C), length (uint16 LE), type (FULL=1, FIRST=2, MIDDLE=3, LAST=4);
  a block tail shorter than a chunk header is zero padding;
- each reassembled record is a serialized ``wandb.proto.wandb_internal_pb2.Record``.

``read_records`` returns the protobuf records; ``read_run`` the parts a test checks (run, config,
history, summary, exited).

``wandb.finish()`` returns before wandb-core has written the file: right after it, the file may hold
only the 7-byte header (seen with wandb 0.31 in about one run in three). ``read_run`` therefore waits
(``timeout`` seconds) for the exit record ``wandb.finish`` writes, re-reading the file until it is there.
"""
from __future__ import annotations

import json
import struct
import time
import zlib
from pathlib import Path

IDENT = b":W&B"
MAGIC = 0xBEE1
VERSIONS = (0,)                # the store versions this reader understands (wandb 0.31 writes 0)
HEADER = struct.Struct("<4sHB")  # ident, magic, version: 7 bytes
CHUNK = struct.Struct("<IHB")    # checksum, length, type: 7 bytes
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class WandbFileError(ValueError):
    """The file is not a W&B offline run file this reader understands, or it is corrupt."""


def _payloads(data: bytes, path) -> list[bytes]:
    """Reassembled record payloads of a W&B LevelDB-style log (header included in ``data``)."""
    if len(data) < HEADER.size:
        raise WandbFileError(f"{path}: {len(data)} bytes, shorter than the W&B header")
    ident, magic, version = HEADER.unpack_from(data, 0)
    if ident != IDENT or magic != MAGIC:
        raise WandbFileError(f"{path}: not a W&B run file (header {data[:HEADER.size]!r})")
    if version not in VERSIONS:
        raise WandbFileError(f"{path}: W&B store version {version}, this reader knows {VERSIONS}")
    payloads, pending = [], None
    pos = HEADER.size
    while pos < len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < CHUNK.size:           # block trailer: zero padding
            pos += left_in_block
            continue
        if pos + CHUNK.size > len(data):
            raise WandbFileError(f"{path}: truncated chunk header at byte {pos}")
        checksum, length, kind = CHUNK.unpack_from(data, pos)
        if checksum == 0 and length == 0 and kind == 0:  # zeroed rest of a block
            pos += left_in_block
            continue
        start, end = pos + CHUNK.size, pos + CHUNK.size + length
        if end > len(data) or length > left_in_block - CHUNK.size:
            raise WandbFileError(f"{path}: chunk at byte {pos} overflows its block or the file")
        payload = data[start:end]
        if zlib.crc32(bytes([kind]) + payload) != checksum:
            raise WandbFileError(f"{path}: checksum mismatch in chunk at byte {pos}")
        if kind == FULL:
            if pending is not None:
                raise WandbFileError(f"{path}: FULL chunk at byte {pos} inside a multi-chunk record")
            payloads.append(payload)
        elif kind == FIRST:
            if pending is not None:
                raise WandbFileError(f"{path}: FIRST chunk at byte {pos} inside a multi-chunk record")
            pending = [payload]
        elif kind in (MIDDLE, LAST):
            if pending is None:
                raise WandbFileError(f"{path}: {'MIDDLE' if kind == MIDDLE else 'LAST'} chunk at byte {pos} "
                                     "without a FIRST one")
            pending.append(payload)
            if kind == LAST:
                payloads.append(b"".join(pending))
                pending = None
        else:
            raise WandbFileError(f"{path}: unknown chunk type {kind} at byte {pos}")
        pos = end
    if pending is not None:
        raise WandbFileError(f"{path}: file ends inside a multi-chunk record")
    return payloads


def read_records(path) -> list:
    """Every ``wandb_internal_pb2.Record`` of a ``.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(path)
    records = []
    for payload in _payloads(path.read_bytes(), path):
        record = pb.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def find_wandb_file(run_dir) -> Path:
    """The one ``<run_dir>/wandb/offline-run-*/run-*.wandb`` of a transferlab run directory."""
    run_dir = Path(run_dir)
    found = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    if len(found) != 1:
        raise FileNotFoundError(f"expected exactly one wandb/offline-run-*/run-*.wandb in {run_dir}, "
                                f"found {[str(p.relative_to(run_dir)) for p in found]}")
    return found[0]


def _json(text: str):
    return json.loads(text) if text else None


def _key(item) -> str:
    """An item's key; nested keys (``a``/``b``) become ``a.b``."""
    return ".".join(item.nested_key) if item.nested_key else item.key


def _history_value(item):
    if item.value_json:
        return json.loads(item.value_json)
    # wandb-core may also write a typed value (the ``value`` oneof: none/boolean/integer/number/text/json)
    kind = item.WhichOneof("value") if "value" in item.DESCRIPTOR.oneofs_by_name else None
    if kind is None or kind == "none":
        return None
    value = getattr(item, kind)
    return json.loads(value) if kind == "json" else value


def _apply(target: dict, update) -> None:
    """Apply a ConfigRecord / SummaryRecord (``update`` and ``remove`` items) to ``target``."""
    for item in update.update:
        target[_key(item)] = _json(item.value_json)
    for item in update.remove:
        target.pop(_key(item), None)


def read_run(path, timeout: float = 10.0) -> dict:
    """What an offline W&B run recorded.

    ``path`` is a transferlab run directory (its ``wandb/offline-run-*/run-*.wandb`` is read) or a
    ``.wandb`` file. Returns ``file`` (the ``.wandb`` path), ``run`` (id, entity, project, name, group,
    job_type, tags, notes), ``config`` (values JSON-decoded, W&B's own ``_wandb`` entry left out),
    ``history`` (one dict per history record, with ``_step``), ``summary``, ``exited`` (an exit record
    is present: ``wandb.finish`` ran), ``exit_code`` and ``counts`` (records per type).

    Waits up to ``timeout`` seconds for the exit record (wandb-core writes the file after
    ``wandb.finish`` returns); after that, returns what the file holds (``exited`` False), or raises
    the last read error if it never could be read.
    """
    path = Path(path)
    deadline = time.monotonic() + timeout
    while True:
        try:
            file = path if path.is_file() else find_wandb_file(path)
            run = _run_of(file, read_records(file))
            if run["exited"] or time.monotonic() >= deadline:
                return run
        except (FileNotFoundError, WandbFileError):  # not there yet, or caught mid-write
            if time.monotonic() >= deadline:
                raise
        time.sleep(0.05)


def _run_of(file: Path, records) -> dict:
    run, config, history, summary = {}, {}, [], {}
    exited, exit_code, counts = False, None, {}
    for record in records:
        kind = record.WhichOneof("record_type")
        counts[kind] = counts.get(kind, 0) + 1
        if kind == "run":
            r = record.run
            run = {"id": r.run_id, "entity": r.entity, "project": r.project, "name": r.display_name,
                   "group": r.run_group, "job_type": r.job_type, "tags": list(r.tags), "notes": r.notes}
            _apply(config, r.config)
            _apply(summary, r.summary)
        elif kind == "config":
            _apply(config, record.config)
        elif kind == "history":
            row = {_key(item): _history_value(item) for item in record.history.item}
            if record.history.HasField("step") and "_step" not in row:
                row["_step"] = record.history.step.num
            history.append(row)
        elif kind == "summary":
            _apply(summary, record.summary)
        elif kind == "exit":
            exited, exit_code = True, record.exit.exit_code
    config.pop("_wandb", None)
    return {"file": file, "run": run, "config": config, "history": history, "summary": summary,
            "exited": exited, "exit_code": exit_code, "counts": counts}


def metric(history: list[dict], key: str) -> list:
    """The values of one metric over the history records that hold it, in order."""
    return [row[key] for row in history if key in row]
