"""The `devices` and per-device `device_memory_limit` settings: parsed, and refused clearly."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from actors.vram.memory_sources import NvmlSource
from supervisor.core.exceptions import ConfigError
from supervisor.core.settings import load_settings
from supervisor.runtime.children import default_child_specs, vram_monitor, worker_launch
from tests.fake_nvml import FakeNvml
from tests.test_device_resolution import _runtime


def test_defaults_are_one_device_as_today() -> None:
    s = load_settings()
    assert s.devices == "auto"
    assert s.device_list() is None
    assert s.memory_limits() is None
    assert s.memory_limit_for("cpu") == ""


def test_a_list_of_devices_and_a_cap_per_device() -> None:
    s = load_settings(
        overrides={"devices": "cpu:0, cpu:1", "device_memory_limit": "cpu:0=1536MiB,cpu:1=3GiB"}
    )
    assert s.device_list() == ("cpu:0", "cpu:1")
    assert s.memory_limits() == {"cpu:0": "1536MiB", "cpu:1": "3GiB"}
    assert s.memory_limit_for("cpu:1") == "3GiB"


def test_one_cap_for_every_device_and_a_device_left_uncapped() -> None:
    s = load_settings(overrides={"devices": "cuda:0,cuda:1", "device_memory_limit": "2GiB"})
    assert s.memory_limit_for("cuda:0") == s.memory_limit_for("cuda:1") == "2GiB"
    s = load_settings(overrides={"devices": "cpu:0,cpu:1", "device_memory_limit": "cpu:1=3GiB"})
    assert s.memory_limit_for("cpu:0") == ""


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"devices": "gpu0"}, "devices", "'auto' or a comma-separated list of cpu:N / cuda:N"),
        ({"devices": "cuda"}, "devices", "'cuda' is neither"),
        ({"devices": "cpu:0,cpu:0"}, "devices", "names a device twice"),
        ({"devices": "cpu:0,cuda:0"}, "devices", "all be of one kind"),
        ({"device_memory_limit": "lots"}, "device_memory_limit", "one size ('2GiB'"),
        ({"device_memory_limit": "cpu:0=1GiB"}, "device_memory_limit", "needs a devices list"),
        (
            {"devices": "cpu:0", "device_memory_limit": "cpu:1=1GiB"},
            "device_memory_limit",
            "be one of devices (cpu:0); 'cpu:1' is not",
        ),
        (
            {"devices": "cpu:0,cpu:1", "device_memory_limit": "cpu:0=1GiB,cpu:1=big"},
            "device_memory_limit",
            "one per device ('cpu:0=1536MiB,cpu:1=3GiB')",
        ),
    ],
)
def test_bad_values_name_the_field_and_what_is_allowed(
    overrides: dict[str, str], field: str, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(overrides=overrides)
    text = str(caught.value)
    assert f"setting '{field}'" in text
    assert words in text


@pytest.mark.anyio
async def test_two_gpus_two_workers_each_sampled_by_its_own_monitor(tmp_path: Path) -> None:
    """A FAKE NVML with two GPUs (this machine has none): a worker and a monitor per device,
    each device's samples budget only that device's jobs."""
    fake = FakeNvml(name="NVIDIA GeForce RTX 3090", devices=2)
    settings = {"devices": "cuda:0,cuda:1", "device_memory_limit": "cuda:1=8GiB"}
    with _runtime(tmp_path / "home", fake, **settings) as runtime:
        first, second = runtime.device_parts
        assert (first.label, first.device, first.child_id) == (
            "cuda:0",
            "cuda:0",
            "generator:cuda:0",
        )
        assert (second.device, second.memory_limit, second.accounting.cap) == (
            "cuda:1",
            "8GiB",
            8 * 1024**3,
        )
        launches = [worker_launch(runtime, p) for p in runtime.device_parts]
        assert [(w.device, w.memory_limit, w.log_path.name) for w in launches] == [
            ("cuda:0", "", "worker-cuda-0.log"),
            ("cuda:1", "8GiB", "worker-cuda-1.log"),
        ]
        ids = [spec.id for spec in default_child_specs(runtime)]
        assert ids == [
            "model_loader",
            "generator:cuda:0",
            "generator:cuda:1",
            "vram_monitor",
            "vram_monitor:cuda:1",
        ]
        assert [lane.device for lane in runtime.jobs.lanes] == ["cuda:0", "cuda:1"]
        monitor = vram_monitor(runtime, second)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                await tg.start(monitor.run)
                reading = await monitor.sample_bounded()
                monitor.stop()
                tg.cancel_scope.cancel()
        assert reading is not None
        assert isinstance(monitor.source, NvmlSource)
        assert monitor.source.device == "cuda:1"
        assert second.accounting.last_sample is not None
        assert first.accounting.last_sample is None


def test_one_device_is_exactly_as_before(tmp_path: Path) -> None:
    with _runtime(tmp_path / "home", FakeNvml(), device="cpu") as runtime:
        (only,) = runtime.device_parts
        assert (only.label, only.child_id, only.log_name) == ("cpu", "generator", "worker.log")
        ids = [spec.id for spec in default_child_specs(runtime)]
        assert ids == ["model_loader", "generator", "vram_monitor"]
        assert not runtime.jobs.placing
        assert [lane.child_id for lane in runtime.jobs.lanes] == ["generator"]
