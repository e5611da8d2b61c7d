"""Interop: a Python grpcio client against the real `store` binary.

Stubs are generated from the project's own proto into tests/python/gen/
(gitignored), so this proves the wire contract from a second language, plus
the standard health service and server reflection.

Run through scripts/test.sh, or directly:
    STORE_BIN=target/debug/store .venv-ci/bin/python -m pytest tests/python
"""

import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
GEN_DIR = Path(__file__).resolve().parent / "gen"
SERVICE = "marginoffer.v1.MarginOfferService"


def _generate_stubs():
    GEN_DIR.mkdir(exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={GEN_DIR}",
            f"--grpc_python_out={GEN_DIR}",
            str(PROTO_DIR / "marginoffer" / "v1" / "marginoffer.proto"),
        ],
        check=True,
    )
    if str(GEN_DIR) not in sys.path:
        sys.path.insert(0, str(GEN_DIR))


_generate_stubs()
from marginoffer.v1 import marginoffer_pb2 as pb  # noqa: E402
from marginoffer.v1 import marginoffer_pb2_grpc as pb_grpc  # noqa: E402


def _store_bin():
    default = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "store"
    path = Path(os.environ.get("STORE_BIN", default))
    if not path.is_absolute():
        path = ROOT / path
    if not path.exists():
        pytest.fail(f"store binary not found at {path}: build it (cargo build -p store-server) or set STORE_BIN")
    return path


@pytest.fixture(scope="module")
def server():
    """The store on free loopback ports over a temporary SQLite file."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "RUST_LOG")}
        env["LOG_LEVEL"] = "info"
        proc = subprocess.Popen(
            [
                str(_store_bin()),
                "--addr", "127.0.0.1:0",
                "--http-addr", "127.0.0.1:0",
                "--database-url", f"sqlite://{tmp}/interop.db",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        lines = queue.Queue()

        def pump():
            for line in proc.stdout:
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        grpc_addr = None
        seen = []
        deadline = time.monotonic() + 60
        while grpc_addr is None:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                proc.kill()
                pytest.fail(f"store did not start: {''.join(seen)}")
            seen.append(line)
            m = re.search(r"grpc listening on (\S+)", line)
            if m:
                grpc_addr = m.group(1)
        channel = grpc.insecure_channel(grpc_addr)
        grpc.channel_ready_future(channel).result(timeout=30)
        try:
            yield channel
        finally:
            channel.close()
            proc.terminate()
            assert proc.wait(timeout=60) == 0, "store did not shut down cleanly on SIGTERM"


@pytest.fixture
def stub(server):
    return pb_grpc.MarginOfferServiceStub(server)


def offer(id, **kw):
    fields = dict(
        id=id,
        offer_type="V1",
        collateral_token="SOL",
        borrow_token="USDC",
        available_borrow_amount=1000.0,
        max_open_ltv=0.5,
        liquidation_ltv=0.8,
        interest_rate=0.05,
        interest_model="fixed",
        liquidity_source="lavarage",
    )
    fields.update(kw)
    return pb.MarginOffer(**fields)


def test_create_get_and_create_or_update(stub):
    created = stub.CreateMarginOffer(pb.CreateMarginOfferRequest(offer=offer("py-1", source="py"))).offer
    assert created.id == "py-1"
    assert created.HasField("created_timestamp") and created.HasField("updated_timestamp")
    got = stub.GetMarginOffer(pb.GetMarginOfferRequest(id="py-1")).offer
    assert got.collateral_token == "SOL" and got.source == "py"
    assert not got.HasField("term_days")

    resp = stub.CreateOrUpdateMarginOffer(
        pb.CreateOrUpdateMarginOfferRequest(offer=offer("py-1", source="py", interest_rate=0.07))
    )
    assert resp.was_created is False
    assert resp.offer.interest_rate == pytest.approx(0.07)
    assert resp.offer.created_timestamp == created.created_timestamp

    with pytest.raises(grpc.RpcError) as err:
        stub.CreateMarginOffer(pb.CreateMarginOfferRequest(offer=offer("py-1")))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_list_with_filter_and_sort(stub):
    rates = {"ls-a": 0.09, "ls-b": 0.01, "ls-c": 0.05}
    for id, rate in rates.items():
        stub.CreateMarginOffer(
            pb.CreateMarginOfferRequest(offer=offer(id, collateral_token="JUP", interest_rate=rate))
        )
    stub.CreateMarginOffer(
        pb.CreateMarginOfferRequest(offer=offer("ls-other", collateral_token="BONK", interest_rate=0.03))
    )

    page = stub.ListMarginOffers(
        pb.ListMarginOffersRequest(collateral_token="JUP", sort_by="interest_rate", sort_order="asc")
    )
    assert [o.id for o in page.offers] == ["ls-b", "ls-c", "ls-a"]
    assert page.total == 3
    assert page.has_more is False

    page = stub.ListMarginOffers(
        pb.ListMarginOffersRequest(
            collateral_token="JUP", sort_by="interest_rate", sort_order="desc", limit=2
        )
    )
    assert [o.id for o in page.offers] == ["ls-a", "ls-c"]
    assert page.total == 3 and page.has_more is True

    page = stub.ListMarginOffers(pb.ListMarginOffersRequest(collateral_token="JUP", min_interest_rate=0.05))
    assert sorted(o.id for o in page.offers) == ["ls-a", "ls-c"]


def test_bulk_overwrite_scoped_by_source(stub):
    snap = "py-snapshot"
    resp = stub.BulkCreateMarginOffers(
        pb.BulkCreateMarginOffersRequest(
            offers=[offer(i, source=snap) for i in ("ow-1", "ow-2", "ow-3")]
            + [offer("ow-outside", source="someone-else")]
        )
    )
    assert resp.success_count == 4 and resp.failure_count == 0
    assert list(resp.processed_ids) == ["ow-1", "ow-2", "ow-3", "ow-outside"]

    scope = pb.OverwriteFilter(source=snap)
    preview = stub.OverwritePreview(pb.OverwritePreviewRequest(filter=scope))
    assert sorted(preview.affected_ids) == ["ow-1", "ow-2", "ow-3"]

    request = pb.BulkOverwriteMarginOffersRequest(
        filter=scope,
        offers=[
            offer("ow-2", source=snap),  # identical: unchanged
            offer("ow-3", source=snap, interest_rate=0.2),  # changed
            offer("ow-4", source=snap),  # new
        ],
    )
    dry = stub.BulkOverwriteMarginOffers(
        pb.BulkOverwriteMarginOffersRequest(
            filter=request.filter, offers=request.offers, dry_run=True
        )
    )
    resp = stub.BulkOverwriteMarginOffers(request)
    for r in (dry, resp):
        assert list(r.created_ids) == ["ow-4"]
        assert list(r.deleted_ids) == ["ow-1"]
        assert list(r.updated_ids) == ["ow-3"]
        assert (r.created_count, r.deleted_count, r.updated_count, r.unchanged_count) == (1, 1, 1, 1)
        assert not r.errors

    page = stub.ListMarginOffers(pb.ListMarginOffersRequest(source=snap, sort_by="id", sort_order="asc"))
    assert [o.id for o in page.offers] == ["ow-2", "ow-3", "ow-4"]
    # Outside the scope: untouched.
    assert stub.GetMarginOffer(pb.GetMarginOfferRequest(id="ow-outside")).offer.source == "someone-else"

    # An offer outside the filter is an item error; nothing is written.
    bad = stub.BulkOverwriteMarginOffers(
        pb.BulkOverwriteMarginOffersRequest(filter=scope, offers=[offer("ow-5", source="elsewhere")])
    )
    assert bad.errors and bad.errors[0].code == "INVALID_ARGUMENT"
    with pytest.raises(grpc.RpcError) as err:
        stub.GetMarginOffer(pb.GetMarginOfferRequest(id="ow-5"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_bad_requests_are_invalid_argument(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateMarginOffer(pb.CreateMarginOfferRequest(offer=offer("bad-1", offer_type="XX")))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "offer_type" in err.value.details()

    with pytest.raises(grpc.RpcError) as err:
        stub.CreateMarginOffer(
            pb.CreateMarginOfferRequest(offer=offer("bad-2", max_open_ltv=0.9, liquidation_ltv=0.8))
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "liquidation_ltv" in err.value.details()

    for req in (
        pb.ListMarginOffersRequest(limit=5000),
        pb.ListMarginOffersRequest(sort_by="colour"),
        pb.ListMarginOffersRequest(page_token="garbage!"),
    ):
        with pytest.raises(grpc.RpcError) as err:
            stub.ListMarginOffers(req)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, req


def test_health(server, stub):
    health = health_pb2_grpc.HealthStub(server)
    resp = health.Check(health_pb2.HealthCheckRequest(service=""))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING

    from google.protobuf import empty_pb2

    own = stub.HealthCheck(empty_pb2.Empty())
    assert own.status == "healthy"
    assert "store" in own.checks


def _reflect(channel, request):
    """One reflection request: v1 first, then v1alpha (same messages on the wire)."""
    last = None
    for path in (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ):
        call = channel.stream_stream(
            path,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        try:
            return next(iter(call(iter([request]), timeout=30)))
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            last = e
    raise last


def test_reflection_lists_and_describes_services(server):
    resp = _reflect(server, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in resp.list_services_response.service}
    assert SERVICE in names, names
    assert "grpc.health.v1.Health" in names, names

    resp = _reflect(server, reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE))
    methods = set()
    for raw in resp.file_descriptor_response.file_descriptor_proto:
        fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
        for svc in fd.service:
            if f"{fd.package}.{svc.name}" == SERVICE:
                methods |= {m.name for m in svc.method}
    assert {"ListMarginOffers", "BulkOverwriteMarginOffers", "SubscribeMarginOffers"} <= methods
