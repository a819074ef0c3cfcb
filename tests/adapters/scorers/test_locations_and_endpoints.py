"""Remote scorers without a server: the location format, and how the endpoint pool spreads and retries."""

from __future__ import annotations

import pytest

from flows.adapters.scorers.endpoints import LONGEST_SKIP_S, EndpointPool, TransientError
from flows.adapters.scorers.location import LocationError, parse_location
from flows.core.scorer import ScorerUnavailable


def test_a_location_names_servers_model_version_and_options():
    location = parse_location(
        "http://a.svc:8501,10.0.0.2:8501/seldon/ns/tfserving/v1/models/recommender/versions/3"
        "?timeout=0.5&retries=4&header.seldon=grpc-tfserving&header.namespace=seldon"
    )
    assert location.scheme == "http"
    assert location.endpoints == ("a.svc:8501", "10.0.0.2:8501")
    assert (location.model, location.version) == ("recommender", "3")
    assert location.prefix == "/seldon/ns/tfserving/v1"
    assert location.model_path == "/seldon/ns/tfserving/v1/models/recommender/versions/3"
    assert (location.timeout_s, location.retries) == (0.5, 4)
    assert location.headers == (("seldon", "grpc-tfserving"), ("namespace", "seldon"))


def test_a_location_has_defaults():
    location = parse_location("grpc://[::1]:8500/models/recommender")
    assert location.endpoints == ("[::1]:8500",)
    assert (location.model, location.version, location.prefix) == ("recommender", None, "")
    assert location.timeout_s > 0 and location.retries >= 1 and location.headers == ()
    assert location.ca_file is None


def test_a_tls_location_may_name_the_certificate_authorities_to_trust():
    location = parse_location("grpcs://kserve.example:443/v2/models/recommender?ca=/etc/serving/ca.pem")
    assert (location.scheme, location.prefix, location.ca_file) == ("grpcs", "/v2", "/etc/serving/ca.pem")


@pytest.mark.parametrize(
    ("location", "complaint"),
    [
        ("ftp://h:1/models/m", "scheme must be one of"),
        ("grpc:///models/m", "names no server"),
        ("grpc://host/models/m", "is not HOST:PORT"),
        ("http://h:1/v1/recommender", "models/NAME"),
        ("http://h:1/v1/models/m?tiemout=3", "unknown option(s) tiemout"),
        ("http://h:1/v1/models/m?timeout=-1", "timeout must be > 0"),
        ("http://h:1/v1/models/m?retries=x", "invalid literal"),
        ("grpc://h:1/models/m?ca=/ca.pem", "option ca needs a TLS scheme"),
    ],
)
def test_a_malformed_location_says_what_is_wrong(location, complaint):
    with pytest.raises(LocationError, match=r".*") as caught:
        parse_location(location)
    assert complaint in str(caught.value) and location in str(caught.value)


class FakeServer:
    def __init__(self, name: str) -> None:
        self.name = name
        self.up = True
        self.calls = 0

    def answer(self) -> str:
        self.calls += 1
        if not self.up:
            raise TransientError("connection refused")
        return self.name


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def pool_of(*servers: FakeServer, retries: int = 2) -> tuple[EndpointPool[FakeServer], FakeClock]:
    clock = FakeClock()
    pool = EndpointPool({server.name: server for server in servers}, retries, clock=clock, sleep=clock.sleep)
    return pool, clock


def test_requests_spread_over_the_servers():
    a, b = FakeServer("a"), FakeServer("b")
    pool, _ = pool_of(a, b)
    answers = [pool.call(FakeServer.answer) for _ in range(10)]
    assert answers.count("a") == answers.count("b") == 5


def test_a_failing_server_is_skipped_and_tried_again_later():
    a, b = FakeServer("a"), FakeServer("b")
    pool, clock = pool_of(a, b)
    a.up = False
    answers = [pool.call(FakeServer.answer) for _ in range(20)]
    assert answers == ["b"] * 20  # each request that met "a" was retried on "b"
    assert a.calls <= 2  # and "a" was then left alone, not tried once per request
    a.up = True
    clock.now += LONGEST_SKIP_S
    answers = [pool.call(FakeServer.answer) for _ in range(10)]
    assert answers.count("a") == 5  # back in the rotation once it answered


def test_when_every_server_fails_the_error_names_each_and_scoring_resumes_after():
    a, b = FakeServer("a"), FakeServer("b")
    pool, clock = pool_of(a, b, retries=3)
    a.up = b.up = False
    with pytest.raises(ScorerUnavailable) as caught:
        pool.call(FakeServer.answer)
    assert "4 attempt(s) failed" in str(caught.value)
    assert "a: connection refused" in str(caught.value) and "b: connection refused" in str(caught.value)
    assert clock.now > 0  # it backed off between attempts
    b.up = True
    assert pool.call(FakeServer.answer) == "b"  # no waiting for a skip to end when nothing else is up


def test_errors_that_are_not_transient_are_not_retried():
    a = FakeServer("a")
    pool, _ = pool_of(a)

    def refuse(server: FakeServer) -> str:
        server.calls += 1
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        pool.call(refuse)
    assert a.calls == 1
