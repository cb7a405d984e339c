"""The choreography map: which workers consume which messages, and what follows.

The graph is read from the objects themselves: a `Worker` consumes `spec` and declares
what it `publishes` (its `failure` message counts as published: Chirp publishes it); an
`Operation` declares what it `publishes` and which operations it `calls`. Nothing is
inferred from source code, so the map is only as complete as those declarations.

`to_mermaid` gives a ``flowchart LR`` for Markdown; `to_svg` draws the same graph as a
standalone SVG with a small layered layout of its own (no Graphviz needed).
`read_traffic` reads how far each consumer group has come from Redis, for a live map.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from xml.sax.saxutils import escape

import redis
from google.protobuf.message import Message

from chirp._errors import UsageError
from chirp._operation import Operation
from chirp._schema import message_spec
from chirp._wire import Names
from chirp._worker import Worker

NodeKind = Literal["message", "worker", "operation"]
EdgeKind = Literal["consumes", "publishes", "calls"]

_PREFIX: dict[NodeKind, str] = {"message": "m", "worker": "w", "operation": "o"}


@dataclass(frozen=True, order=True, slots=True)
class Node:
    """A message, a worker or an operation, by its Chirp name."""

    kind: NodeKind
    name: str

    @property
    def key(self) -> str:
        """Return an identifier unique in the map, safe in Mermaid and SVG ids."""
        return f"{_PREFIX[self.kind]}_{self.name.replace('-', '_')}"


@dataclass(frozen=True, order=True, slots=True)
class Edge:
    """An arrow of the map: message to worker, publisher to message, or a call."""

    source: Node
    target: Node
    kind: EdgeKind


@dataclass(frozen=True, slots=True)
class Traffic:
    """How far one worker's consumer group has read its message's stream.

    Attributes:
        read: Entries the group has read (``entries-read``), or None if unknown.
        lag: Entries still to read (``lag``), or None if Redis cannot tell.
        length: Entries in the stream now (``XLEN``); trimmed streams hold fewer.
    """

    read: int | None
    lag: int | None
    length: int

    @property
    def label(self) -> str:
        """Return a short text for the edge, such as ``120 read, lag 3``."""
        if self.read is None:
            return f"not started, {self.length} queued"
        lag = "?" if self.lag is None else str(self.lag)
        return f"{self.read} read, lag {lag}"


@dataclass(slots=True)
class Choreography:
    """The nodes and edges of a system's map, with what one message sets in motion."""

    nodes: set[Node] = field(default_factory=set)
    edges: set[Edge] = field(default_factory=set)

    def add(self, source: Node, target: Node, kind: EdgeKind) -> None:
        """Add an edge and both of its nodes."""
        self.nodes.update((source, target))
        self.edges.add(Edge(source, target, kind))

    def sorted_nodes(self) -> list[Node]:
        """Return the nodes in a stable order: by kind, then by name."""
        return sorted(self.nodes)

    def sorted_edges(self) -> list[Edge]:
        """Return the edges in a stable order."""
        return sorted(self.edges)

    def following(self, message: str) -> set[Node | Edge]:
        """Return every node and edge reachable from a message, the message included.

        Raises:
            UsageError: No message of that name is on the map.
        """
        start = Node("message", message)
        if start not in self.nodes:
            known = sorted(n.name for n in self.nodes if n.kind == "message")
            raise UsageError(f"no message {message!r} on the map; it has {known}")

        reached: set[Node | Edge] = {start}
        frontier = [start]
        while frontier:
            node = frontier.pop()
            for edge in self.edges:
                if edge.source == node and edge.target not in reached:
                    frontier.append(edge.target)
                    reached.add(edge.target)
                if edge.source == node:
                    reached.add(edge)
        return reached


def collect(objects: Iterable[object]) -> Choreography:
    """Build the map of the workers and operations among `objects`; skip the rest."""
    graph = Choreography()
    for obj in objects:
        if isinstance(obj, Worker):
            _add_worker(graph, obj)
        elif isinstance(obj, Operation):
            _add_operation(graph, obj)
    return graph


def _add_worker(graph: Choreography, worker: Worker[Any]) -> None:
    node = Node("worker", worker.name)
    graph.nodes.add(node)
    graph.add(Node("message", worker.spec.name), node, "consumes")
    published = list(worker.publishes)
    if worker.failure is not None:
        published.append(worker.failure.cls)
    _add_published(graph, node, published)
    for called in worker.calls:
        graph.add(node, Node("operation", called.name), "calls")


def _add_operation(graph: Choreography, operation: Operation[Any, Any]) -> None:
    node = Node("operation", operation.name)
    graph.nodes.add(node)
    _add_published(graph, node, operation.publishes)
    for called in operation.calls:
        graph.add(node, Node("operation", called.name), "calls")


def _add_published(
    graph: Choreography, publisher: Node, classes: Iterable[type[Message]]
) -> None:
    for cls in classes:
        graph.add(publisher, Node("message", message_spec(cls).name), "publishes")


def load(modules: Sequence[str]) -> Choreography:
    """Import modules and map the workers and operations at their top level.

    A module that imports a worker or an operation from another one shows it too.

    Raises:
        UsageError: A module cannot be imported, or none defines a worker or operation.
    """
    objects: dict[int, object] = {}
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise UsageError(
                f"cannot import module {module_name!r}: {error}"
            ) from error
        for value in vars(module).values():
            if isinstance(value, Worker | Operation):
                objects[id(value)] = value
    if not objects:
        raise UsageError(f"no @worker or @operation in {list(modules)}")
    return collect(objects.values())


def read_traffic(
    graph: Choreography, client: redis.Redis, *, namespace: str = ""
) -> dict[Edge, Traffic]:
    """Read each consumer group's progress on its message's stream.

    Args:
        graph: The map whose ``consumes`` edges to read.
        client: A synchronous Redis client.
        namespace: The system's namespace, as given to `chirp run`.

    Returns:
        The traffic of each ``consumes`` edge whose stream exists.
    """
    names = Names(namespace)
    found: dict[Edge, Traffic] = {}
    consumes = [e for e in graph.sorted_edges() if e.kind == "consumes"]
    for message in sorted({e.source.name for e in consumes}):
        key = names.stream_key(message)
        if not client.exists(key):
            continue
        length = int(client.xlen(key))
        groups = {_text(g["name"]): g for g in client.xinfo_groups(key)}
        for edge in consumes:
            if edge.source.name == message:
                found[edge] = _traffic_of(groups.get(edge.target.name), length)
    return found


def _traffic_of(group: Mapping[str, Any] | None, length: int) -> Traffic:
    if group is None:
        return Traffic(None, None, length)
    read, lag = group.get("entries-read"), group.get("lag")
    return Traffic(
        None if read is None else int(read), None if lag is None else int(lag), length
    )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def traffic_colour(traffic: Traffic | None) -> str | None:
    """Return the colour of an edge with this traffic: behind, busy, or None."""
    if traffic is None:
        return None
    if traffic.lag is None or traffic.lag > 0 or traffic.read is None:
        return "#d9822b"
    return "#2e8b57" if traffic.read > 0 else None


_MERMAID_SHAPES: dict[NodeKind, tuple[str, str]] = {
    "message": ('(["', '"])'),
    "worker": ('["', '"]'),
    "operation": ('{{"', '"}}'),
}
_MERMAID_CLASSES = (
    "  classDef message fill:#fff4d6,stroke:#b8901c",
    "  classDef worker fill:#dbe9ff,stroke:#3b6fb6",
    "  classDef operation fill:#e3f5e1,stroke:#3c8d3c",
    "  classDef hot stroke:#d62728,stroke-width:3px",
)


def to_mermaid(
    graph: Choreography,
    *,
    highlight: set[Node | Edge] | None = None,
    traffic: Mapping[Edge, Traffic] | None = None,
) -> str:
    """Return the map as a Mermaid ``flowchart LR``.

    Messages are stadiums, workers rectangles, operations hexagons; calls are dotted.

    Args:
        graph: The map.
        highlight: Nodes and edges to draw in red (see `Choreography.following`).
        traffic: Labels for ``consumes`` edges (see `read_traffic`).
    """
    traffic = traffic or {}
    lines = ["flowchart LR"]
    for node in graph.sorted_nodes():
        opening, closing = _MERMAID_SHAPES[node.kind]
        lines.append(f"  {node.key}{opening}{node.name}{closing}:::{node.kind}")
    edges = graph.sorted_edges()
    lines.extend(_mermaid_edge(edge, traffic.get(edge)) for edge in edges)
    lines.extend(_MERMAID_CLASSES)
    lines.extend(_mermaid_styles(graph, edges, highlight or set(), traffic))
    return "\n".join(lines) + "\n"


def _mermaid_edge(edge: Edge, traffic: Traffic | None) -> str:
    arrow = "-.->" if edge.kind == "calls" else "-->"
    label = "calls" if edge.kind == "calls" else ""
    if traffic is not None:
        label = traffic.label
    text = f"|{label}|" if label else ""
    return f"  {edge.source.key} {arrow}{text} {edge.target.key}"


def _mermaid_styles(
    graph: Choreography,
    edges: list[Edge],
    highlight: set[Node | Edge],
    traffic: Mapping[Edge, Traffic],
) -> list[str]:
    lines: list[str] = []
    hot = [n.key for n in graph.sorted_nodes() if n in highlight]
    if hot:
        lines.append(f"  class {','.join(hot)} hot")
    for index, edge in enumerate(edges):
        colour = "#d62728" if edge in highlight else traffic_colour(traffic.get(edge))
        if colour is not None:
            lines.append(f"  linkStyle {index} stroke:{colour},stroke-width:2px")
    return lines


# The SVG layout, in pixels: columns of nodes from left to right, by the longest path
# that leads to them, ordered within a column to keep edges short (barycenters).
_PAD = 24.0
_NODE_HEIGHT = 34.0
_ROW_GAP = 18.0
_COLUMN_GAP = 110.0
_CHAR_WIDTH = 7.2
_LEGEND_HEIGHT = 44.0
_EDGE_COLOUR = "#666666"
_HOT = "#d62728"
_FILL: dict[NodeKind, tuple[str, str]] = {
    "message": ("#fff4d6", "#b8901c"),
    "worker": ("#dbe9ff", "#3b6fb6"),
    "operation": ("#e3f5e1", "#3c8d3c"),
}


@dataclass(frozen=True, slots=True)
class _Box:
    x: float
    y: float
    width: float

    @property
    def middle(self) -> float:
        return self.y + _NODE_HEIGHT / 2


def to_svg(
    graph: Choreography,
    *,
    highlight: set[Node | Edge] | None = None,
    traffic: Mapping[Edge, Traffic] | None = None,
    title: str = "Chirp choreography",
) -> str:
    """Draw the map as a standalone SVG document, the same for the same map.

    Args:
        graph: The map.
        highlight: Nodes and edges to draw in red, the others faded.
        traffic: Labels and colours for ``consumes`` edges (see `read_traffic`).
        title: The document's title.
    """
    highlight, traffic = highlight or set(), traffic or {}
    boxes, width, height = _layout(graph)
    edges = graph.sorted_edges()
    colours = {e: _edge_colour(e, highlight, traffic) for e in edges}
    parts = [_svg_open(width, height + _LEGEND_HEIGHT, title, set(colours.values()))]
    for edge in edges:
        faded = bool(highlight) and edge not in highlight
        parts.append(_svg_edge(edge, boxes, colours[edge], faded, traffic.get(edge)))
    for node in graph.sorted_nodes():
        parts.append(_svg_node(node, boxes[node], highlight))
    parts.extend(_svg_legend(height))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _edge_colour(
    edge: Edge, highlight: set[Node | Edge], traffic: Mapping[Edge, Traffic]
) -> str:
    if edge in highlight:
        return _HOT
    return traffic_colour(traffic.get(edge)) or _EDGE_COLOUR


def _layout(graph: Choreography) -> tuple[dict[Node, _Box], float, float]:
    columns = _columns(graph)
    neighbours: dict[Node, set[Node]] = {n: set() for n in graph.nodes}
    for edge in graph.edges:
        neighbours[edge.source].add(edge.target)
        neighbours[edge.target].add(edge.source)
    rank = {node: i for i, column in enumerate(columns) for node in column}
    for sweep in range(6):
        _sweep(columns, neighbours, rank, downward=sweep % 2 == 0)
    return _place(columns)


def _columns(graph: Choreography) -> list[list[Node]]:
    successors = _acyclic_successors(graph)
    rank = dict.fromkeys(graph.nodes, 0)
    for node in _topological(graph.sorted_nodes(), successors):
        for target in successors[node]:
            rank[target] = max(rank[target], rank[node] + 1)
    columns: list[list[Node]] = [[] for _ in range(max(rank.values(), default=-1) + 1)]
    for node in graph.sorted_nodes():
        columns[rank[node]].append(node)
    return columns


def _acyclic_successors(graph: Choreography) -> dict[Node, list[Node]]:
    """Return the edges as successor lists, each edge closing a cycle reversed."""
    out: dict[Node, list[Node]] = {n: [] for n in graph.nodes}
    for edge in graph.sorted_edges():
        if edge.source != edge.target:
            out[edge.source].append(edge.target)
    kept: dict[Node, list[Node]] = {n: [] for n in graph.nodes}
    on_path: set[Node] = set()
    done: set[Node] = set()

    def visit(node: Node) -> None:
        on_path.add(node)
        for target in out[node]:
            if target in on_path:
                kept[target].append(node)
                continue
            kept[node].append(target)
            if target not in done:
                visit(target)
        on_path.discard(node)
        done.add(node)

    for node in graph.sorted_nodes():
        if node not in done:
            visit(node)
    return kept


def _topological(nodes: list[Node], successors: dict[Node, list[Node]]) -> list[Node]:
    indegree = dict.fromkeys(nodes, 0)
    for targets in successors.values():
        for target in targets:
            indegree[target] += 1
    ready = [n for n in nodes if indegree[n] == 0]
    order: list[Node] = []
    while ready:
        node = ready.pop(0)
        order.append(node)
        for target in successors[node]:
            indegree[target] -= 1
            if indegree[target] == 0:
                ready.append(target)
    return order


def _sweep(
    columns: list[list[Node]],
    neighbours: dict[Node, set[Node]],
    rank: dict[Node, int],
    *,
    downward: bool,
) -> None:
    """Reorder each column by the mean position of its neighbours on one side."""
    position = _positions(columns)
    indices = range(len(columns)) if downward else range(len(columns) - 1, -1, -1)
    for index in indices:
        weights: dict[Node, tuple[float, Node]] = {}
        for node in columns[index]:
            side = [
                position[other]
                for other in neighbours[node]
                if (rank[other] < index if downward else rank[other] > index)
            ]
            mean = sum(side) / len(side) if side else position[node]
            weights[node] = (mean, node)
        columns[index].sort(key=weights.__getitem__)
        position.update(_positions([columns[index]]))


def _positions(columns: list[list[Node]]) -> dict[Node, float]:
    return {
        node: i - (len(column) - 1) / 2
        for column in columns
        for i, node in enumerate(column)
    }


def _place(columns: list[list[Node]]) -> tuple[dict[Node, _Box], float, float]:
    heights = [len(c) * (_NODE_HEIGHT + _ROW_GAP) - _ROW_GAP for c in columns]
    tallest = max(heights, default=0.0)
    boxes: dict[Node, _Box] = {}
    x = _PAD
    for column, height in zip(columns, heights, strict=True):
        width = max(_label_width(node.name) for node in column)
        y = _PAD + (tallest - height) / 2
        for node in column:
            boxes[node] = _Box(x, y, width)
            y += _NODE_HEIGHT + _ROW_GAP
        x += width + _COLUMN_GAP
    return boxes, max(x - _COLUMN_GAP + _PAD, 360.0), tallest + 2 * _PAD


def _label_width(text: str) -> float:
    return max(len(text) * _CHAR_WIDTH + 28, 80.0)


def _n(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")


def _marker_id(colour: str) -> str:
    return "arrow-" + colour.lstrip("#")


def _svg_open(width: float, height: float, title: str, colours: set[str]) -> str:
    markers = "".join(
        f'<marker id="{_marker_id(c)}" viewBox="0 0 10 10" refX="10" refY="5" '
        f'markerWidth="8" markerHeight="8" orient="auto">'
        f'<path d="M0 0L10 5L0 10z" fill="{c}"/></marker>'
        for c in sorted({*colours, _EDGE_COLOUR})
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_n(width)}" '
        f'height="{_n(height)}" viewBox="0 0 {_n(width)} {_n(height)}" '
        'font-family="Helvetica, Arial, sans-serif" font-size="12">\n'
        f"<title>{escape(title)}</title>\n"
        f'<rect width="100%" height="100%" fill="#ffffff"/>\n<defs>{markers}</defs>'
    )


def _svg_edge(
    edge: Edge,
    boxes: Mapping[Node, _Box],
    colour: str,
    faded: bool,
    traffic: Traffic | None,
) -> str:
    source, target = boxes[edge.source], boxes[edge.target]
    x1, y1 = source.x + source.width, source.middle
    x2, y2 = target.x, target.middle
    bend = max(abs(x2 - x1) / 2, 40.0)
    path = (
        f"M{_n(x1)} {_n(y1)} C{_n(x1 + bend)} {_n(y1)} "
        f"{_n(x2 - bend)} {_n(y2)} {_n(x2)} {_n(y2)}"
    )
    dash = ' stroke-dasharray="5 4"' if edge.kind == "calls" else ""
    opacity = ' opacity="0.3"' if faded else ""
    width = "2.5" if colour != _EDGE_COLOUR else "1.4"
    line = (
        f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="{width}"'
        f'{dash}{opacity} marker-end="url(#{_marker_id(colour)})">'
        f"<title>{edge.source.name} {edge.kind} {edge.target.name}</title></path>"
    )
    if traffic is None:
        return line
    return line + (
        f'\n<text x="{_n((x1 + x2) / 2)}" y="{_n((y1 + y2) / 2 - 5)}" '
        f'text-anchor="middle" font-size="10" fill="{colour}">'
        f"{escape(traffic.label)}</text>"
    )


def _svg_node(node: Node, box: _Box, highlight: set[Node | Edge]) -> str:
    fill, stroke = _FILL[node.kind]
    width = "1.2"
    opacity = ""
    if node in highlight:
        stroke, width = _HOT, "2.5"
    elif highlight:
        opacity = ' opacity="0.35"'
    shape = _svg_shape(node.kind, box, f'fill="{fill}" stroke="{stroke}"')
    return (
        f'<g class="{node.kind}"{opacity} stroke-width="{width}">'
        f"<title>{node.kind} {node.name}</title>{shape}"
        f'<text x="{_n(box.x + box.width / 2)}" y="{_n(box.middle + 4)}" '
        f'text-anchor="middle" stroke="none" fill="#222222">{escape(node.name)}'
        "</text></g>"
    )


def _svg_shape(kind: NodeKind, box: _Box, paint: str) -> str:
    x, y, w, h = box.x, box.y, box.width, _NODE_HEIGHT
    if kind == "operation":
        points = [
            (x + 10, y), (x + w - 10, y), (x + w, y + h / 2),
            (x + w - 10, y + h), (x + 10, y + h), (x, y + h / 2),
        ]  # fmt: skip
        text = " ".join(f"{_n(px)},{_n(py)}" for px, py in points)
        return f'<polygon points="{text}" {paint}/>'
    radius = h / 2 if kind == "message" else 4.0
    return (
        f'<rect x="{_n(x)}" y="{_n(y)}" width="{_n(w)}" height="{_n(h)}" '
        f'rx="{_n(radius)}" {paint}/>'
    )


def _svg_legend(top: float) -> list[str]:
    parts: list[str] = []
    x = _PAD
    for kind in ("message", "worker", "operation"):
        fill, stroke = _FILL[kind]
        box = _Box(x, top, 80.0)
        shape = _svg_shape(kind, box, f'fill="{fill}" stroke="{stroke}"')
        parts.append(
            f'<g font-size="11">{shape}<text x="{_n(x + 40)}" '
            f'y="{_n(box.middle + 4)}" text-anchor="middle">{kind}</text></g>'
        )
        x += 96
    y = top + _NODE_HEIGHT / 2
    parts.append(
        f'<g font-size="11" fill="#444444"><path d="M{_n(x)} {_n(y)}h36" '
        f'stroke="{_EDGE_COLOUR}" stroke-dasharray="5 4"/>'
        f'<text x="{_n(x + 42)}" y="{_n(y + 4)}">calls</text></g>'
    )
    return parts
