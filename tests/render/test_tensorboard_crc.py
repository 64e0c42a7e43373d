"""use_fast_tensorboard_crc: event records checksummed in C, byte-identical to tensorboard's own."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as pure_python_crc
from tensorboard.summary.writer import record_writer

from lit_explain.compat import use_fast_tensorboard_crc

pytest.importorskip("crc32c")


@pytest.fixture
def restored(monkeypatch: pytest.MonkeyPatch) -> None:
    # The replacement is process-wide; put tensorboard's own back after each test.
    monkeypatch.setattr(record_writer, "masked_crc32c", record_writer.masked_crc32c)


@pytest.mark.usefixtures("restored")
def test_fast_crc_equals_tensorboards_own() -> None:
    assert use_fast_tensorboard_crc()
    fast = record_writer.masked_crc32c
    assert fast is not pure_python_crc
    for size in (0, 1, 8, 4095, 70_000):
        data = os.urandom(size)
        assert fast(data) == pure_python_crc(data), size


@pytest.mark.usefixtures("restored")
def test_tensorboard_sink_writes_records_tensorboard_reads(tmp_path: Path) -> None:
    import torch
    from lightning.pytorch.loggers import TensorBoardLogger

    from lit_explain.sinks.items import Picture
    from lit_explain.sinks.tensorboard_sink import TensorBoardSink

    record_writer.masked_crc32c = pure_python_crc
    sink = TensorBoardSink(TensorBoardLogger(tmp_path, name="run"))
    assert record_writer.masked_crc32c is not pure_python_crc  # the sink switched to the C checksum
    picture = Picture(torch.randint(0, 256, (3, 64, 48), dtype=torch.uint8))
    sink.image("val/picture", picture, step=3)
    sink.flush()
    (events,) = Path(sink.logger.log_dir).glob("events.out.tfevents.*")
    # The loader checks every record's header and data CRC with tensorboard's pure-Python CRC32C.
    images = [
        v.image
        for record in RawEventFileLoader(str(events)).Load()
        for v in Event.FromString(record).summary.value
        if v.tag == "val/picture"
    ]
    assert [i.encoded_image_string for i in images] == [picture.png]
