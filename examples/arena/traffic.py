"""The demo's traffic: which requests to send, what each must get, and sending them.

A `Plan` builds the requests phase by phase, because later phases depend on what
earlier ones created: the user ids the gateway made, the follows that were recorded.
Every `Call` says which status it expects and, where it matters, what the body must
show. A `Runner` sends calls at bounded concurrency and keeps a `Tally`: every
request's route, status and latency, and every answer that was not the expected one.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

CREATE = "POST /users"
GET = "GET /users/{id}"
FOLLOW = "POST /users/{id}/follow"
NOTIFICATIONS = "GET /users/{id}/notifications"
ROUTES = (CREATE, GET, FOLLOW, NOTIFICATIONS)

# Notifications arrive after the follow answered (and after retries of the flaky push),
# so a notification list is asked again until it is complete, for at most this long.
SETTLE_SECONDS = 20.0
_SETTLE_INTERVAL = 0.1
_LIST_LIMIT = 500
_WORDS = (
    "ada blaze cipher dash echo frost glitch hex ion jinx kilo lumen mako nova onyx "
    "pixel quill rook sable talon umbra vex wisp xeno yuki zephyr"
).split()

Check = Callable[[Any], str | None]


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP request and the answer it must get.

    Attributes:
        route: The route template, for grouping in the summary.
        method: The HTTP method.
        path: The concrete path.
        expect: The status the answer must have.
        body: The JSON body to send, if any.
        check: Returns what is wrong with the answer's JSON body, or None.
        settle: Repeat the request until `check` passes, for up to SETTLE_SECONDS.
    """

    route: str
    method: str
    path: str
    expect: int
    body: dict[str, str] | None = None
    check: Check | None = None
    settle: bool = False


@dataclass(frozen=True, slots=True)
class Answer:
    """What the gateway answered: status (0 if no answer), JSON body, ray id."""

    status: int
    body: Any
    ray_id: str | None


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A call whose final answer was not the expected one."""

    call: Call
    answer: Answer
    complaint: str


@dataclass(slots=True)
class Tally:
    """Every request sent, and every call that ended with an unexpected answer."""

    samples: list[tuple[str, int, float]] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)
    codes: Counter[tuple[str, int]] = field(default_factory=Counter)
    rays: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Budget:
    """How many requests of each kind a run of `total` requests sends."""

    creates: int
    duplicate_creates: int
    follows: int
    self_follows: int
    unknown_follows: int
    repeat_follows: int
    gets: int
    unknown_gets: int
    lists: int

    @classmethod
    def of(cls, total: int) -> Budget:
        """Split `total` requests; about a quarter of them create users."""

        def share(fraction: float) -> int:
            return max(1, round(total * fraction))

        parts = {
            "creates": share(0.225),
            "duplicate_creates": share(0.025),
            "follows": share(0.3),
            "self_follows": share(0.025),
            "unknown_follows": share(0.025),
            "repeat_follows": share(0.025),
            "gets": share(0.15),
            "unknown_gets": share(0.025),
        }
        return cls(**parts, lists=max(1, total - sum(parts.values())))


class Plan:
    """The calls of each phase, built from what the phases before it did.

    Args:
        total: About how many requests to send in all.
        seed: Seed of every random choice, so runs repeat.
    """

    def __init__(self, total: int, *, seed: int) -> None:
        self.budget = Budget.of(total)
        self._rng = random.Random(seed)
        self._handles: dict[str, str] = {}
        self._follows: list[tuple[str, str]] = []
        self._followers: dict[str, list[str]] = {}

    @property
    def user_ids(self) -> list[str]:
        """The ids of the users created so far."""
        return list(self._handles)

    def creates(self) -> list[Call]:
        """Phase 1: create users, each with a handle of its own."""
        words = self._rng.choices(_WORDS, k=self.budget.creates)
        return [
            _create(f"{word}_{i}", f"{word.title()} {i}")
            for i, word in enumerate(words)
        ]

    def record_created(self, calls: Sequence[Call], answers: Sequence[Answer]) -> None:
        """Remember the users phase 1 created: their ids come from the gateway."""
        for call, answer in zip(calls, answers, strict=True):
            if answer.status == 200 and call.body is not None:
                self._handles[answer.body["user_id"]] = call.body["handle"]

    def writes(self) -> list[Call]:
        """Phase 2: follows and refusals (taken handles, self, unknown users)."""
        self._follows = self._pick_follows(self.budget.follows)
        for follower, followee in self._follows:
            self._followers.setdefault(followee, []).append(follower)
        calls = [_follow(a, b, 200) for a, b in self._follows]
        calls += self._duplicate_creates() + self._bad_follows() + self._unknown_gets()
        self._rng.shuffle(calls)
        return calls

    def reads(self) -> list[Call]:
        """Phase 3: follower counts, now settled, and follows made twice."""
        ids = self.user_ids
        gets = [self._get(self._rng.choice(ids)) for _ in range(self.budget.gets)]
        repeats = self._rng.sample(
            self._follows, min(len(self._follows), self.budget.repeat_follows)
        )
        calls = gets + [_follow(a, b, 409, "ALREADY_FOLLOWING") for a, b in repeats]
        self._rng.shuffle(calls)
        return calls

    def notifications(self) -> list[Call]:
        """Phase 4: notification lists, mostly of followed users, until complete."""
        followees = list(self._followers)
        ids = self.user_ids
        calls = []
        for _ in range(self.budget.lists):
            pool = followees if followees and self._rng.random() < 0.8 else ids
            calls.append(self._notifications(self._rng.choice(pool)))
        return calls

    def _pick_follows(self, count: int) -> list[tuple[str, str]]:
        # Popularity is skewed, as on a real platform: a few players gather most
        # followers, so some notification lists are long.
        ids = self.user_ids
        weights = [1 / rank for rank in range(1, len(ids) + 1)]
        chosen: dict[tuple[str, str], None] = {}
        for _ in range(count * 20):
            if len(chosen) == count or len(ids) < 2:
                break
            follower = self._rng.choice(ids)
            followee = self._rng.choices(ids, weights)[0]
            if follower != followee:
                chosen[(follower, followee)] = None
        return list(chosen)

    def _duplicate_creates(self) -> list[Call]:
        taken = self._rng.choices(
            list(self._handles.values()), k=self.budget.duplicate_creates
        )
        return [
            _create(handle, "Copycat", expect=409, code="HANDLE_TAKEN")
            for handle in taken
        ]

    def _bad_follows(self) -> list[Call]:
        ids = self.user_ids
        calls = []
        for _ in range(self.budget.self_follows):
            user = self._rng.choice(ids)
            calls.append(_follow(user, user, 400, "CANNOT_FOLLOW_SELF"))
        for index in range(self.budget.unknown_follows):
            pair = [self._rng.choice(ids), _unknown_id(self._rng)]
            if index % 2:
                pair.reverse()
            calls.append(_follow(pair[0], pair[1], 404, "USER_NOT_FOUND"))
        return calls

    def _unknown_gets(self) -> list[Call]:
        paths = [
            f"/users/{_unknown_id(self._rng)}" for _ in range(self.budget.unknown_gets)
        ]
        return [_call(GET, "GET", path, 404, code="USER_NOT_FOUND") for path in paths]

    def _get(self, user_id: str) -> Call:
        expected = len(self._followers.get(user_id, []))

        def check(body: Any) -> str | None:
            got = body.get("follower_count")
            if got != expected:
                return f"follower_count is {got}, expected {expected}"
            return None

        return _call(GET, "GET", f"/users/{user_id}", 200, check=check)

    def _notifications(self, user_id: str) -> Call:
        texts = sorted(
            f"{self._handles[f]} followed you" for f in self._followers.get(user_id, [])
        )

        def check(body: Any) -> str | None:
            got = sorted(n["text"] for n in body.get("notifications", []))
            if len(texts) <= _LIST_LIMIT and got != texts:
                return f"{len(got)} notification(s), expected {len(texts)}"
            return None

        path = f"/users/{user_id}/notifications?limit={_LIST_LIMIT}"
        return _call(NOTIFICATIONS, "GET", path, 200, check=check, settle=True)


def _create(
    handle: str, display_name: str, *, expect: int = 200, code: str | None = None
) -> Call:
    body = {"handle": handle, "display_name": display_name}
    return _call(CREATE, "POST", "/users", expect, body=body, code=code)


def _follow(follower: str, followee: str, expect: int, code: str | None = None) -> Call:
    path = f"/users/{follower}/follow"
    return _call(
        FOLLOW, "POST", path, expect, body={"followee_id": followee}, code=code
    )


def _call(
    route: str,
    method: str,
    path: str,
    expect: int,
    *,
    body: dict[str, str] | None = None,
    code: str | None = None,
    check: Check | None = None,
    settle: bool = False,
) -> Call:
    if code is not None:
        check = _has_code(code)
    return Call(route, method, path, expect, body, check, settle)


def _has_code(code: str) -> Check:
    def check(body: Any) -> str | None:
        got = body.get("code")
        return None if got == code else f"error code is {got!r}, expected {code!r}"

    return check


def _unknown_id(rng: random.Random) -> str:
    # Gateway ids are "u" and 16 hex digits: "x" can never be one.
    return f"x{rng.getrandbits(64):016x}"


class Runner:
    """Send calls through the gateway, a bounded number at a time.

    Args:
        http: A client whose base URL is the gateway.
        concurrency: Requests in flight at most.
    """

    def __init__(self, http: httpx.AsyncClient, *, concurrency: int) -> None:
        self.tally = Tally()
        self._http = http
        self._concurrency = concurrency

    async def run(
        self, calls: Sequence[Call], *, on_done: Callable[[], None] = lambda: None
    ) -> list[Answer]:
        """Send every call and return their final answers, in the order of `calls`.

        Args:
            calls: What to send.
            on_done: Called each time a call has its final answer (for progress).
        """
        answers: list[Answer] = [Answer(0, None, None)] * len(calls)
        pending = iter(enumerate(calls))

        async def lane() -> None:
            for index, call in pending:
                answers[index] = await self._settle(call)
                on_done()

        async with asyncio.TaskGroup() as group:
            for _ in range(min(self._concurrency, len(calls))):
                group.create_task(lane())
        return answers

    async def _settle(self, call: Call) -> Answer:
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            answer = await self._send(call)
            complaint = _complaint(call, answer)
            if complaint is None or not call.settle or time.monotonic() > deadline:
                break
            await asyncio.sleep(_SETTLE_INTERVAL)

        if complaint is not None:
            self.tally.mismatches.append(Mismatch(call, answer, complaint))
        return answer

    async def _send(self, call: Call) -> Answer:
        started = time.perf_counter()
        try:
            response = await self._http.request(call.method, call.path, json=call.body)
        except httpx.HTTPError as error:
            answer = Answer(0, f"{type(error).__name__}: {error}", None)
        else:
            answer = Answer(
                response.status_code, _json(response), response.headers.get("x-ray-id")
            )
        self.tally.samples.append(
            (call.route, answer.status, time.perf_counter() - started)
        )
        if isinstance(answer.body, dict) and answer.status != 200:
            self.tally.codes[(str(answer.body.get("code")), answer.status)] += 1
        if answer.ray_id and answer.status == 200:
            self.tally.rays.setdefault(call.route, answer.ray_id)
        return answer


def _complaint(call: Call, answer: Answer) -> str | None:
    if answer.status != call.expect:
        return f"expected {call.expect}, got {answer.status}: {answer.body}"
    if not answer.ray_id:
        return "the answer has no X-Ray-Id header"
    if not isinstance(answer.body, dict):
        return f"the answer is not a JSON object: {answer.body!r}"
    return None if call.check is None else call.check(answer.body)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text
