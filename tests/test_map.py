"""`chirp map`: the choreography graph, its Mermaid and SVG forms, live traffic.

The example's map is committed as docs/map.svg and in docs/map.md; a test here fails
when they are stale. ``CHIRP_UPDATE_MAP=1 pytest tests/test_map.py`` rewrites them.
"""

import os
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import redis
from chirptest.messages_pb2 import EchoRequest, EchoResponse, Ping, PingDone, Status
from typer.testing import CliRunner

import chirp
from chirp._cli import app
from chirp._map import (
    Edge,
    Node,
    collect,
    load,
    read_traffic,
    to_mermaid,
    to_svg,
)
from chirp._wire import Names
from chirp.testing import EmbeddedServers

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLE_MODULES = [
    "arena.user.workers",
    "arena.user.operations",
    "arena.notify.workers",
    "arena.notify.operations",
]
MERMAID_BLOCK = re.compile(r"```mermaid\n(.*?)```", re.DOTALL)
SVG = "{http://www.w3.org/2000/svg}"


def message(name: str) -> Node:
    return Node("message", name)


def worker(name: str) -> Node:
    return Node("worker", name)


@chirp.worker(name="map-ping", publishes=(PingDone,))
async def ping(ctx: chirp.Context, msg: Ping) -> None:
    """Consume test-ping, publish test-ping-done."""


@chirp.worker(name="map-loop", publishes=(Ping,))
async def loop(ctx: chirp.Context, msg: PingDone) -> None:
    """Close a cycle: test-ping-done leads to test-ping again."""


@chirp.operation(name="map-inner", publishes=(Status,))
async def inner(ctx: chirp.Context, request: EchoRequest) -> EchoResponse:
    """An operation that publishes."""
    return EchoResponse()


@chirp.operation(name="map-outer", calls=(inner,))
async def outer(ctx: chirp.Context, request: EchoRequest) -> EchoResponse:
    """An operation that calls another."""
    return await inner(ctx, request)


def test_the_example_map_has_its_consumers_and_publishers() -> None:
    graph = load(EXAMPLE_MODULES)

    consumes = Edge(message("user-follow"), worker("user-follow"), "consumes")
    assert consumes in graph.edges
    assert (
        Edge(worker("user-follow"), message("user-follow-complete"), "publishes")
        in graph.edges
    )
    assert (
        Edge(message("user-follow-complete"), worker("notify-follow"), "consumes")
        in graph.edges
    )
    calls = Edge(worker("notify-follow"), Node("operation", "user-get"), "calls")
    assert calls in graph.edges
    assert len(graph.edges) == 9


def test_following_a_message_reaches_everything_it_sets_in_motion() -> None:
    graph = load(EXAMPLE_MODULES)

    reached = graph.following("user-follow")

    nodes = {item.name for item in reached if isinstance(item, Node)}
    assert nodes == {
        "user-follow",
        "user-follow-complete",
        "user-follow-fail",
        "notify-follow",
        "notification-create",
        "user-get",
    }
    assert all(isinstance(item, Node) or item.source in reached for item in reached)


def test_an_unknown_start_lists_the_messages() -> None:
    graph = collect([ping])

    with pytest.raises(chirp.UsageError, match=r"no message 'nope'.*'test-ping'"):
        graph.following("nope")


def test_operations_show_their_calls_and_publications() -> None:
    graph = collect([outer, inner])

    assert graph.edges == {
        Edge(Node("operation", "map-outer"), Node("operation", "map-inner"), "calls"),
        Edge(Node("operation", "map-inner"), message("test-status"), "publishes"),
    }


def test_declarations_must_be_messages_and_operations() -> None:
    async def handler(ctx: chirp.Context, request: EchoRequest) -> EchoResponse:
        return EchoResponse()

    with pytest.raises(chirp.SchemaError):
        chirp.operation(publishes=(EchoRequest,))(handler)
    with pytest.raises(chirp.UsageError, match="not an operation"):
        chirp.operation(calls=(handler,))(handler)  # type: ignore[arg-type]


def test_mermaid_draws_shapes_edges_and_the_highlight() -> None:
    graph = collect([ping, outer, inner])

    text = to_mermaid(graph, highlight=graph.following("test-ping"))

    assert text.startswith("flowchart LR\n")
    assert '  m_test_ping(["test-ping"]):::message\n' in text
    assert '  o_map_inner{{"map-inner"}}:::operation\n' in text
    assert "  m_test_ping --> w_map_ping\n" in text
    assert "  o_map_outer -.->|calls| o_map_inner\n" in text
    assert "  class m_test_ping,m_test_ping_done,w_map_ping hot\n" in text
    assert text.count("linkStyle") == 2


def test_the_svg_is_valid_and_the_same_every_time() -> None:
    graph = collect([ping, loop, outer, inner])

    first = to_svg(graph, highlight=graph.following("test-ping-done"))

    assert first == to_svg(graph, highlight=graph.following("test-ping-done"))
    root = ElementTree.fromstring(first)
    groups = [g for g in root.iter(f"{SVG}g") if g.get("class")]
    assert sorted(g.findtext(f"{SVG}text") or "" for g in groups) == sorted(
        node.name for node in graph.nodes
    )
    assert len(root.findall(f"{SVG}path")) == len(graph.edges)


def test_the_layout_flows_left_to_right_through_a_cycle() -> None:
    graph = collect([ping, loop])

    boxes = _node_positions(to_svg(graph))

    assert boxes["test-ping"] < boxes["map-ping"] < boxes["test-ping-done"]
    assert boxes["test-ping-done"] < boxes["map-loop"]


def _node_positions(svg: str) -> dict[str, float]:
    root = ElementTree.fromstring(svg)
    positions: dict[str, float] = {}
    for group in root.iter(f"{SVG}g"):
        label = group.find(f"{SVG}text")
        if group.get("class") and label is not None:
            positions[label.text or ""] = float(label.get("x", "0"))
    return positions


def test_live_traffic_reads_each_consumer_group(
    servers: EmbeddedServers, unique_name: str
) -> None:
    graph = collect([ping])
    client = redis.Redis.from_url(servers.redis_url)
    key = Names(unique_name).stream_key("test-ping")
    try:
        for _ in range(3):
            client.xadd(key, {"e": b"x"})
        client.xgroup_create(key, "map-ping", id="0")
        client.xreadgroup("map-ping", "c1", {key: ">"}, count=2)
        traffic = read_traffic(graph, client, namespace=unique_name)
    finally:
        client.close()

    edge = Edge(message("test-ping"), worker("map-ping"), "consumes")
    assert traffic[edge].label == "2 read, lag 1"
    assert "2 read, lag 1" in to_mermaid(graph, traffic=traffic)
    assert ">2 read, lag 1</text>" in to_svg(graph, traffic=traffic)


def test_live_traffic_skips_streams_nobody_wrote(
    servers: EmbeddedServers, unique_name: str
) -> None:
    client = redis.Redis.from_url(servers.redis_url)
    try:
        assert read_traffic(collect([ping]), client, namespace=unique_name) == {}
    finally:
        client.close()


def test_the_command_writes_svg_or_prints_mermaid(tmp_path: Path) -> None:
    out = tmp_path / "map.svg"
    modules = [arg for name in EXAMPLE_MODULES for arg in ("--module", name)]
    paths = ["--path", str(ROOT / "examples")]

    drawn = CliRunner().invoke(app, ["map", *modules, *paths, "--out", str(out)])
    printed = CliRunner().invoke(
        app, ["map", *modules, *paths, "--mermaid", "--from", "user-create"]
    )
    refused = CliRunner().invoke(app, ["map", *modules, "--out", "map.png"])

    assert drawn.exit_code == 0, drawn.output
    assert out.read_text().startswith("<svg")
    assert printed.exit_code == 0, printed.output
    assert "m_user_create --> w_user_create" in printed.output
    assert refused.exit_code == 2
    assert "write .svg" in refused.output


def test_the_committed_example_map_is_current() -> None:
    graph = load(EXAMPLE_MODULES)
    svg = to_svg(graph, title="Arena: messages, workers and operations")
    mermaid = to_mermaid(graph)
    svg_path, markdown_path = DOCS / "map.svg", DOCS / "map.md"
    markdown = markdown_path.read_text()
    if os.environ.get("CHIRP_UPDATE_MAP"):
        svg_path.write_text(svg)
        markdown = MERMAID_BLOCK.sub(lambda _: f"```mermaid\n{mermaid}```", markdown)
        markdown_path.write_text(markdown)

    stale = "stale; regenerate with CHIRP_UPDATE_MAP=1 pytest tests/test_map.py"
    assert svg_path.read_text() == svg, f"docs/map.svg is {stale}"
    block = MERMAID_BLOCK.search(markdown)
    assert block is not None and block[1] == mermaid, f"docs/map.md is {stale}"
