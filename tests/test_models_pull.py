from __future__ import annotations

from pathlib import Path

import pytest
from hub_server import Fault, FaultKind, HubRepo, HubServer
from models_fixtures import BIG, BIG_BYTES, REPO_ID, entry, hub, hub_session, store, tiny_dir

from actors.models.availability import StoreState, check_availability
from actors.models.manifest import read_manifest
from actors.models.model_errors import DiskSpaceRefused, DownloadFailed, PickleWeightsRefused
from actors.models.pull import DownloadProgress, HubAccess, plan_pull, pull_model
from actors.models.registry import ModelEntry
from actors.models.store import ModelStore
from actors.models.verify import verify_model_dir
from supervisor.errors.categories import ErrorCode

__all__ = ["entry", "hub", "hub_session", "store", "tiny_dir"]


def access(hub: HubServer, **kw: object) -> HubAccess:
    return HubAccess(endpoint=hub.endpoint, backoff_base=0.01, backoff_max=0.05, **kw)  # type: ignore[arg-type]


def test_pull_survives_dropped_connections_and_503s(
    hub: HubServer, store: ModelStore, entry: ModelEntry
) -> None:
    hub.add_fault(Fault(FaultKind.DROP, BIG, "GET", times=1, drop_after=11 * 1024 * 1024))
    hub.add_fault(Fault(FaultKind.DROP, "text_encoder/model.safetensors", "GET", times=2))
    hub.add_fault(Fault(FaultKind.STATUS_503, "vae/*", "GET", times=2))
    hub.add_fault(Fault(FaultKind.STATUS_500, "api", "GET", times=1))
    seen: list[DownloadProgress] = []
    result = pull_model(entry, store, access(hub), seen.append)

    assert BIG in result.downloaded
    resumed = [r for r in hub.requests if r.path == BIG and r.status == 206]
    assert len(resumed) == 1
    assert resumed[0].range == "bytes=10485760-"
    assert len(hub.gets("text_encoder/model.safetensors")) == 3
    assert [r.status for r in hub.requests if r.path.startswith("vae/") and r.method == "GET"][
        :2
    ] == [503, 503]
    manifest = read_manifest(store.home, entry.name)
    assert manifest is not None
    assert manifest.commit == hub.repo.commit
    report = verify_model_dir(result.path, manifest, deep=True)
    assert report.ok, report.problems
    assert (result.path / BIG).read_bytes() == hub.repo.files[BIG].data
    assert seen[-1].bytes == seen[-1].total == result.bytes_downloaded
    assert check_availability(entry, store).state is StoreState.PRESENT


def test_wrong_bytes_are_caught_and_fetched_again(
    hub: HubServer, store: ModelStore, entry: ModelEntry
) -> None:
    target = "transformer/diffusion_pytorch_model.safetensors"
    hub.add_fault(Fault(FaultKind.WRONG_BYTES, target, "GET", times=1))
    result = pull_model(entry, store, access(hub))
    assert hub.gets(target) == [target, target]
    assert (result.path / target).read_bytes() == hub.repo.files[target].data


@pytest.mark.parametrize("kind", [FaultKind.GATED_401, FaultKind.GATED_403])
def test_gated_fails_fast_and_says_what_to_do(
    hub: HubServer, store: ModelStore, entry: ModelEntry, kind: FaultKind
) -> None:
    hub.add_fault(Fault(kind, "*", times=100))
    with pytest.raises(DownloadFailed) as caught:
        pull_model(entry, store, access(hub, retries=5))
    assert caught.value.code is ErrorCode.MODEL_GATED
    assert "Accept the licence" in str(caught.value)
    assert "hf_token" in str(caught.value)
    assert len(hub.requests) == 1  # no retries
    assert hub.gets() == []


def test_repo_not_found_fails_fast(hub: HubServer, store: ModelStore, entry: ModelEntry) -> None:
    hub.add_fault(Fault(FaultKind.NOT_FOUND, "api", times=100))
    with pytest.raises(DownloadFailed) as caught:
        pull_model(entry, store, access(hub, retries=5))
    assert caught.value.code is ErrorCode.MODEL_NOT_FOUND
    assert "repo_id" in caught.value.remedy
    assert len(hub.requests) == 1


def test_unknown_revision_fails_fast(hub: HubServer, store: ModelStore, entry: ModelEntry) -> None:
    bad = entry.model_copy(update={"revision": "no-such-branch"})
    with pytest.raises(DownloadFailed) as caught:
        pull_model(bad, store, access(hub, retries=5))
    assert caught.value.code is ErrorCode.MODEL_REVISION_NOT_FOUND
    assert len(hub.requests) == 1


def test_full_disk_is_refused_before_any_download(
    hub: HubServer, store: ModelStore, entry: ModelEntry
) -> None:
    with pytest.raises(DiskSpaceRefused) as caught:
        pull_model(entry, store, access(hub, free_space=lambda _: 1_000_000))
    assert caught.value.code is ErrorCode.FS_DISK_FULL
    assert caught.value.needed > BIG_BYTES
    assert "GENVISOR_HF_CACHE_DIR" in str(caught.value)
    assert hub.gets() == []
    assert not (store.cache_dir / "models--Wan-AI--Wan2.1-T2V-1.3B-Diffusers" / "blobs").exists()


def test_offline_mode_is_a_clear_error(
    hub: HubServer, store: ModelStore, entry: ModelEntry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadFailed) as caught:
        pull_model(entry, store, access(hub))
    assert caught.value.code is ErrorCode.NET_OFFLINE
    assert "HF_HUB_OFFLINE" in str(caught.value)
    assert hub.requests == []


def test_unreachable_hub_is_offline_after_bounded_retries(
    store: ModelStore, entry: ModelEntry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    waits: list[float] = []
    dead = HubAccess(endpoint="http://127.0.0.1:9", retries=3, backoff_base=0.5,
                     backoff_max=1.0, sleep=waits.append)  # fmt: skip
    with pytest.raises(DownloadFailed) as caught:
        pull_model(entry, store, dead)
    assert caught.value.code is ErrorCode.NET_OFFLINE
    assert waits == [0.5, 1.0, 1.0]


def test_pickle_weights_are_refused_unless_allowed(
    tiny_dir: Path, store: ModelStore, entry: ModelEntry, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    extra = {"unet/diffusion_pytorch_model.bin": b"pickle", "text_encoder/model.bin": b"dup"}
    with HubServer(HubRepo(REPO_ID, tiny_dir, extra)) as pickled:
        with pytest.raises(PickleWeightsRefused) as caught:
            plan_pull(entry, store, access(pickled))
        assert caught.value.files == ["unet/diffusion_pytorch_model.bin"]
        assert "GENVISOR_ALLOW_PICKLE_WEIGHTS" in str(caught.value)
        plan = plan_pull(entry, store, access(pickled, allow_pickle=True))
    fetched = {f.path for f in plan.to_fetch}
    # A folder that has safetensors never gets its pickle twin.
    assert "unet/diffusion_pytorch_model.bin" in fetched
    assert "text_encoder/model.bin" not in fetched


def test_a_mirror_without_file_metadata_or_paths_info_is_read_from_each_files_headers(
    hub: HubServer, store: ModelStore, entry: ModelEntry
) -> None:
    """Names only in the model info and no paths-info route (404): each file's HEAD gives its
    hash (ETag / X-Linked-Etag) and size, and every byte is still checked against it."""
    hub.file_metadata = False
    hub.paths_info = False
    plan = plan_pull(entry, store, access(hub))
    assert [r.status for r in hub.requests if r.method == "POST"] == [404]
    assert {r.path for r in hub.requests if r.method == "HEAD"} == {f.path for f in plan.files}
    by_path = {f.path: f for f in plan.files}
    big = hub.repo.files[BIG]
    assert by_path[BIG].sha256 == big.sha256
    assert by_path[BIG].size == len(big.data)
    assert by_path["model_index.json"].git_oid == hub.repo.files["model_index.json"].git_oid
    hub.add_fault(Fault(FaultKind.WRONG_BYTES, BIG, "GET", times=1))
    result = pull_model(entry, store, access(hub))
    assert hub.gets(BIG) == [BIG, BIG]  # the flipped byte was caught by the header's hash
    manifest = read_manifest(store.home, entry.name)
    assert manifest is not None
    assert verify_model_dir(result.path, manifest, deep=True).ok


def test_a_mirror_whose_model_info_lists_no_files_is_read_from_the_tree(
    hub: HubServer, store: ModelStore, entry: ModelEntry
) -> None:
    listed = plan_pull(entry, store, access(hub)).files
    hub.siblings = False
    assert plan_pull(entry, store, access(hub)).files == listed
    result = pull_model(entry, store, access(hub))
    assert (result.path / BIG).read_bytes() == hub.repo.files[BIG].data


def test_a_hub_that_redirects_lfs_files_to_its_storage(
    hub: HubServer, store: ModelStore, entry: ModelEntry
) -> None:
    """The Hub answers an LFS file's resolve with a 302 to its storage, the hash and size on
    the redirect's headers; a transfer cut there resumes there with a Range request."""
    hub.redirect_lfs = True
    hub.add_fault(Fault(FaultKind.DROP, BIG, "GET", times=1, drop_after=11 * 1024 * 1024))
    result = pull_model(entry, store, access(hub))
    redirects = {r.path for r in hub.requests if r.kind == "redirect"}
    assert BIG in redirects
    assert all(hub.repo.files[p].lfs for p in redirects)
    resumed = [r for r in hub.requests if r.path == BIG and r.status == 206]
    assert [r.range for r in resumed] == ["bytes=10485760-"]
    manifest = read_manifest(store.home, entry.name)
    assert manifest is not None
    assert verify_model_dir(result.path, manifest, deep=True).ok
