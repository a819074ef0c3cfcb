"""Remote scorers against real servers on loopback: the TensorFlow Serving stand-in and Seldon MLServer.

Each server speaks REST and gRPC; every test runs over both.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from support.core_runs import (
    FlowRun,
    GatedSource,
    ScheduledSource,
    Turn,
    at,
    every_shard,
    messages,
    run_in_thread,
    run_in_turns,
    sample_records,
    serve_into,
)
from support.jobs import wait_for

from flows.adapters.scorers import ModelLoadError, ScorerCache, ScorerUnavailable, build_scorer
from flows.adapters.scorers.grpc_channel import RECONNECT_WITHIN_MS
from flows.core.descriptors import ModelDescriptor, ModelType
from flows.core.shipped import SHIPPED_MODELS_DIR
from flows.testing import tfserving_double as tfserving_stand_in
from flows.testing.local_servers import LocalServer, mlserver, tfserving_double
from flows.testing.loopback import free_port
from flows.testing.tfserving_double import ServedModel

SCHEMES = ["grpc", "http"]
PROTOCOL_TYPES = {"tfserving": ModelType.TENSORFLOWSERVING, "v2": ModelType.OPENINFERENCE}


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, LocalServer]]:
    """Model v1 on the TensorFlow Serving stand-in and on MLServer, v2 on a second stand-in."""
    with tfserving_double(1) as tfserving, tfserving_double(2) as tfserving_v2, mlserver(1) as v2:
        yield {"tfserving": tfserving, "tfserving-v2": tfserving_v2, "v2": v2}


def remote(
    server: LocalServer, protocol: str, scheme: str, name: str = "", other_servers: str = ""
) -> ModelDescriptor:
    """A descriptor for the recommender on `server`, e.g. grpc://127.0.0.1:P/v1/models/recommender."""
    location = server.location(scheme, "timeout=2&retries=1", other_servers)
    return ModelDescriptor(name or f"{protocol}-{scheme}", "", PROTOCOL_TYPES[protocol], None, location)


def pairs(count: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return rng.integers(0, 1000, count).astype(np.float32), rng.integers(0, 300, count).astype(np.float32)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("protocol", ["tfserving", "v2"])
def test_remote_scores_equal_embedded_scores(servers, model_v1, protocol, scheme):
    users, products = pairs(1500)
    embedded = build_scorer(model_v1)
    scorer = build_scorer(remote(servers[protocol], protocol, scheme))
    try:
        np.testing.assert_allclose(
            scorer.score(users, products), embedded.score(users, products), rtol=1e-5, atol=1e-6
        )
        assert scorer.source.startswith(f"{protocol}+{scheme}://127.0.0.1:")
    finally:
        scorer.close()


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("protocol", ["tfserving", "v2"])
def test_a_model_the_server_does_not_have_is_refused_by_name(servers, protocol, scheme):
    descriptor = remote(servers[protocol], protocol, scheme)
    missing = ModelDescriptor(
        "typo",
        "",
        descriptor.model_type,
        None,
        descriptor.model_source_location.replace("recommender", "recomender"),
    )
    with pytest.raises(ModelLoadError) as caught:
        build_scorer(missing)
    assert "'typo'" in str(caught.value) and "recomender" in str(caught.value)


def test_a_server_that_does_not_answer_is_refused_and_can_be_retried():
    cache = ScorerCache()
    nobody = ModelDescriptor(
        "nobody",
        "",
        ModelType.TENSORFLOWSERVING,
        None,
        f"grpc://127.0.0.1:{free_port()}/models/m?timeout=0.5",
    )
    for _ in range(2):  # refused each time, not remembered: the server may be up when it is published again
        with pytest.raises(ModelLoadError, match="no server answered") as caught:
            cache.acquire(nobody)
        assert caught.value.retryable


@pytest.mark.parametrize("scheme", SCHEMES)
def test_one_of_two_servers_down_does_not_stop_scoring(servers, model_v1, scheme):
    dead = f"127.0.0.1:{free_port()},"
    scorer = build_scorer(remote(servers["tfserving"], "tfserving", scheme, other_servers=dead))
    embedded = build_scorer(model_v1)
    users, products = pairs(200)
    try:
        for _ in range(10):
            np.testing.assert_allclose(
                scorer.score(users, products), embedded.score(users, products), rtol=1e-5
            )
    finally:
        scorer.close()


def test_swaps_between_embedded_and_remote_and_between_servers_mid_stream(servers, model_v1, model_v2):
    records = sample_records(30)
    grpc_v1 = remote(servers["tfserving"], "tfserving", "grpc", "remote-v1")
    rest_v2 = remote(servers["tfserving-v2"], "tfserving", "http", "remote-v2")
    mlserver_v1 = remote(servers["v2"], "v2", "grpc", "mlserver-v1")
    turns = [
        Turn([model], messages(records), every_shard("swapped", model.model_name, 4))
        for model in (model_v1, grpc_v1, rest_v2, mlserver_v1, model_v2)
    ]
    run = run_in_turns(turns)

    assert run.errors() == []
    scores = {
        name: {
            (
                r.result.input_record.user,
                tuple(r.result.input_record.products),
            ): r.result.model_result.probabilities
            for r in results
        }
        for name, results in run.by_model().items()
    }
    assert sorted(scores) == sorted(
        ["recommender-v1", "remote-v1", "remote-v2", "mlserver-v1", "recommender-v2"]
    )
    assert all(len(by_record) == len(records) for by_record in scores.values())
    for remote_name, embedded_name in [
        ("remote-v1", "recommender-v1"),
        ("mlserver-v1", "recommender-v1"),
        ("remote-v2", "recommender-v2"),
    ]:
        for key, probabilities in scores[remote_name].items():
            np.testing.assert_allclose(probabilities, scores[embedded_name][key], rtol=1e-5, atol=1e-6)
    assert scores["recommender-v1"] != scores["recommender-v2"]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("protocol", ["tfserving", "v2"])
def test_a_server_stopped_mid_stream_gives_error_results_and_scoring_resumes(servers, protocol, scheme):
    server = servers[protocol]
    before, during, after = sample_records(20), sample_records(20, 100), sample_records(20, 200)
    gates = [threading.Event() for _ in range(3)]
    run = FlowRun()
    data = GatedSource(list(zip(gates, [messages(before), messages(during), messages(after)])))
    flow = serve_into(
        run, data, ScheduledSource(at(0, [remote(server, protocol, scheme)])), shards=2, hold_limit=100
    )
    flow_thread = run_in_thread(flow)
    try:
        gates[0].set()
        wait_for(lambda: len(run.results) >= 20, "results before the outage")
        server.stop()
        gates[1].set()
        wait_for(lambda: len(run.results) >= 40, "results during the outage")
        server.start()
        time.sleep(RECONNECT_WITHIN_MS / 1000 * 1.5)  # a gRPC channel reconnects within this (plus jitter)
        gates[2].set()
        flow_thread.join(timeout=60)
    finally:
        if server.process is None:
            server.start()
    assert not flow_thread.is_alive()
    assert len(run.results) == 60
    errors = [item.result.metadata.errors for item in run.results]
    assert errors[:20] == [""] * 20 and errors[40:] == [""] * 20
    assert all(
        "failed" in error and str(server.grpc_port if scheme == "grpc" else server.rest_port) in error
        for error in errors[20:40]
    )
    assert all(item.result.model_result.probabilities == [] for item in run.results[20:40])


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_swapped_out_remote_scorer_closes_its_connections(servers, scheme):
    cache = ScorerCache()
    descriptor = remote(servers["tfserving"], "tfserving", scheme)
    scorer, _ = cache.acquire(descriptor)
    users, products = pairs(10)
    assert scorer.score(users, products).shape == (10,)
    cache.release(descriptor.digest)  # what a shard does when the next model replaces this one
    with pytest.raises((ValueError, ScorerUnavailable), match="(?i)closed"):
        scorer.score(users, products)


class _MetadataRecorder(grpc.ServerInterceptor):
    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []

    def intercept_service(self, continuation, handler_call_details):
        self.seen.append(dict(handler_call_details.invocation_metadata))
        return continuation(handler_call_details)


def test_location_headers_reach_the_server_as_grpc_metadata_and_http_headers():
    """The original routed through Seldon and Ambassador with `seldon: grpc-tfserving`,
    `namespace: seldon`."""
    model = ServedModel(str(SHIPPED_MODELS_DIR / "1"), "recommender", 1)
    recorder, seen_headers = _MetadataRecorder(), []
    grpc_port, rest_port = free_port(), free_port()
    grpc_srv = tfserving_stand_in.grpc_server(model, grpc_port, [recorder])
    grpc_srv.start()
    http_srv = tfserving_stand_in.rest_server(model, rest_port, seen_headers)
    threading.Thread(target=http_srv.serve_forever, daemon=True).start()
    routing = "header.seldon=grpc-tfserving&header.namespace=seldon"
    users, products = pairs(5)
    try:
        for scheme, port in (("grpc", grpc_port), ("http", rest_port)):
            location = f"{scheme}://127.0.0.1:{port}/v1/models/recommender?{routing}"
            scorer = build_scorer(ModelDescriptor("routed", "", ModelType.TENSORFLOWSERVING, None, location))
            assert scorer.score(users, products).shape == (5,)
            scorer.close()
    finally:
        http_srv.shutdown()
        grpc_srv.stop(grace=None)
    # The metadata check, admission's probe, then one Predict each (more if a call was retried: every
    # request must carry the headers, however many a loaded machine made).
    assert len(recorder.seen) >= 3 and len(seen_headers) >= 3
    for metadata in recorder.seen + [
        {key.lower(): value for key, value in headers.items()} for headers in seen_headers
    ]:
        assert metadata["seldon"] == "grpc-tfserving" and metadata["namespace"] == "seldon"


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory) -> Iterator[tuple[LocalServer, str]]:
    """The TensorFlow Serving stand-in over TLS only, and the PEM of a CA that did not sign its
    certificate."""
    import trustme

    stranger = tmp_path_factory.mktemp("tls") / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    with tfserving_double(1, tls=True) as server:
        yield server, str(stranger)


def tls_descriptor(server: LocalServer, scheme: str, options: str) -> ModelDescriptor:
    location = server.location(scheme, f"timeout=2&retries=0&{options}".rstrip("&"))
    return ModelDescriptor(f"tls-{scheme}", "", ModelType.TENSORFLOWSERVING, None, location)


@pytest.mark.parametrize("scheme", ["grpcs", "https"])
def test_tls_servers_are_scored_with_the_ca_the_location_names(tls_server, model_v1, scheme):
    server, _ = tls_server
    users, products = pairs(200)
    scorer = build_scorer(tls_descriptor(server, scheme, f"ca={server.tls.ca}"))
    try:
        np.testing.assert_allclose(
            scorer.score(users, products), build_scorer(model_v1).score(users, products), rtol=1e-5, atol=1e-6
        )
    finally:
        scorer.close()


@pytest.mark.parametrize("scheme", ["grpcs", "https"])
def test_a_tls_server_whose_certificate_is_not_trusted_is_refused(tls_server, scheme):
    server, stranger = tls_server
    port = server.grpc_port if scheme == "grpcs" else server.rest_port
    for options in (f"ca={stranger}", ""):  # a CA that did not sign it; the system's roots
        with pytest.raises(ModelLoadError, match="no server answered") as caught:
            build_scorer(tls_descriptor(server, scheme, options))
        assert f"127.0.0.1:{port}" in str(caught.value) and "CERTIFICATE_VERIFY_FAILED" in str(caught.value)


def test_plaintext_grpc_to_a_tls_server_is_refused(tls_server):
    server, _ = tls_server
    with pytest.raises(ModelLoadError, match="no server answered"):
        build_scorer(tls_descriptor(server, "grpc", ""))


@pytest.mark.parametrize("content", [None, b"not a certificate"])
def test_a_ca_file_that_is_missing_or_not_pem_refuses_the_model_by_path(tmp_path, content):
    ca = tmp_path / "ca.pem"
    if content is not None:
        ca.write_bytes(content)
    for scheme in ("grpcs", "https"):
        location = f"{scheme}://127.0.0.1:{free_port()}/v1/models/recommender?ca={ca}"
        with pytest.raises(ModelLoadError) as caught:
            build_scorer(ModelDescriptor("bad-ca", "", ModelType.TENSORFLOWSERVING, None, location))
        assert str(ca) in str(caught.value) and not caught.value.retryable
