"""The gateway's live page in headless Chromium, against a real worker, broker and PostgreSQL.

The test publishes its own events (product events and agent runs through the
gateway, undecodable and invalid messages straight to the topic), waits until
PostgreSQL holds every one and the worker has reported its lag, then lets
Chromium load ``/live`` and run its JavaScript, and reads the rendered DOM: the
numbers on the page must be the ones the test computed from what it published.
A screenshot is saved to ``.artifacts/live-page.png``. A second test drives the
page over the DevTools protocol: the API-key prompt, and no polling while hidden.

Chromium is Debian's package (``make tools`` installs it). Without it the test
FAILS in CI and is skipped, with the reason, elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import select
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import asyncpg
import orjson
import pytest

from pipeline.core import latency
from pipeline.settings import Settings
from pipeline.sink.reconcile import wait_until_processed
from producers.publisher import Publisher
from tests.conftest import REPO, Workers, wait_for
from tests.integration.test_gateway import agent, gateway_settings, keys, serve

pytestmark = pytest.mark.integration

ARTIFACT = REPO / ".artifacts" / "live-page.png"
WINDOW = (1400, 1000)
# Flags without which Chromium reaches for the network (refused on a closed machine) or
# needs a sandbox and a GPU the test machines do not have.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        reason = (
            "chromium is missing: the live page is tested in headless Chromium;"
            " install it with `make tools` (as root) or `apt-get install chromium`"
        )
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        print(f"\nSKIP: {reason}")
        pytest.skip(reason)
    return path


async def run_chromium(*args: str, timeout: float = 60) -> bytes:
    """Chromium with a fresh profile; its stdout. The page's timers run in virtual time."""
    profile = tempfile.mkdtemp(prefix="live-page-chromium-")
    try:
        proc = await asyncio.create_subprocess_exec(
            chromium(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"chromium did not finish within {timeout:.0f} s") from None
        assert proc.returncode == 0, f"chromium exited {proc.returncode}: {err.decode()[-2000:]}"
        return out
    finally:
        shutil.rmtree(profile, ignore_errors=True)


async def rendered(url: str) -> Node:
    """The page's DOM after its scripts ran (and refreshed once: 5 s of virtual time)."""
    html = await run_chromium("--virtual-time-budget=7000", "--dump-dom", url)
    return parse_html(html.decode())


# --- the rendered DOM, read with the standard library ---

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.parts + [c.text for c in self.children]).strip()

    def all(self, tag: str | None = None, **attrs: str | None) -> list[Node]:
        """Every descendant with ``tag`` whose attributes match (None: present, any value)."""
        found = []
        for c in self.children:
            wanted = tag is None or c.tag == tag
            for name, value in attrs.items():
                have = c.attrs.get(name.replace("_", "-"))
                wanted = wanted and have is not None and (value is None or have == value)
            if wanted:
                found.append(c)
            found.extend(c.all(tag, **attrs))
        return found

    def one(self, tag: str | None = None, **attrs: str | None) -> Node:
        found = self.all(tag, **attrs)
        assert len(found) == 1, f"expected one <{tag} {attrs}>, found {len(found)}"
        return found[0]


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].parts.append(data)


def parse_html(html: str) -> Node:
    builder = _Builder()
    builder.feed(html)
    builder.close()
    return builder.root


def number(text: str) -> int:
    return int(text.replace(",", ""))


# --- what the test publishes ---

HOUR = 3600


def product_events(now: int) -> list[dict[str, Any]]:
    """Product events over the last three hours: (channel, event_name, hours ago) -> count."""
    plan = {
        ("web", "page_view", 0): 7,
        ("web", "page_view", 1): 4,
        ("web", "purchase", 0): 3,
        ("ios", "page_view", 2): 5,
        ("email", "signup", 1): 2,
    }
    events = []
    for (channel, name, ago), count in plan.items():
        base = now - now % HOUR - ago * HOUR
        for i in range(count):
            ts = base + min(60 * i + 30, now - base)  # inside its hour, never ahead of now
            events.append(
                {"event_name": name, "channel": channel, "user_id": f"u{i}", "timestamp": ts}
            )
    return events


BAD_MESSAGES = {"not_json": [b"{not json", b"\xff\xfe"], "schema_invalid": [b'{"event_name": 1}']}


@dataclass
class Published:
    by_series: Counter[tuple[str, str]]
    by_hour: Counter[tuple[str, str, str]]  # (HH:MM, channel, event_name)
    dead_letters: dict[str, int]


async def publish_everything(gw: Any, settings: Settings) -> tuple[Published, dict[int, int]]:
    now = int(time.time())
    events = product_events(now)
    r = await gw.post("/events/bulk", events)
    assert r.status_code == 202 and r.json()["accepted"] == len(events), r.text
    runs = [
        agent("run.started"),
        agent("run.started"),
        agent("run.started"),
        agent("run.completed", status="succeeded", cost_usd=0.5, latency_ms=1200),
        agent("run.completed", status="succeeded", cost_usd=0.25, latency_ms=800),
        agent("run.failed", status="failed"),
    ]
    for run in runs:
        r = await gw.post("/v1/events", run)
        assert r.status_code == 202, r.text
    async with Publisher(settings) as pub:
        bad = [(uuid.uuid4().bytes, raw) for raws in BAD_MESSAGES.values() for raw in raws]
        receipt = await pub.publish_raw(bad)
    offsets = dict(gw.app.published.end_offsets)
    for p, end in receipt.end_offsets.items():
        offsets[p] = max(offsets.get(p, 0), end)
    hours = Counter(
        (
            time.strftime("%H:%M", time.gmtime(e["timestamp"] - e["timestamp"] % HOUR)),
            e["channel"],
            e["event_name"],
        )
        for e in events
    )
    return (
        Published(
            Counter((e["channel"], e["event_name"]) for e in events),
            hours,
            {k: len(v) for k, v in BAD_MESSAGES.items()},
        ),
        offsets,
    )


async def fetch(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


async def test_an_empty_pipeline_says_so_in_each_table(settings: Settings) -> None:
    """No events, no dead letters, no worker yet: each table says why it is empty."""
    chromium()
    async with serve(gateway_settings(settings)) as gw:
        dom = await rendered(gw.url + "/live")
    muted = {c.text for c in dom.all("td", **{"class": "muted"})}
    assert muted == {
        "No events in this window.",
        "None: every message was accepted.",
        "No partition reported yet.",
    }, muted


async def test_the_live_page_shows_what_was_just_published(
    settings: Settings, workers: Workers
) -> None:
    chromium()
    worker = workers.start()
    dsn = settings.database_url or ""
    async with serve(gateway_settings(settings)) as gw:
        published, offsets = await publish_everything(gw, settings)
        await wait_until_processed(dsn, settings.events_topic, offsets, 120)

        # The lag the page must show, computed here: the end offsets the broker
        # acknowledged minus the offsets PostgreSQL holds durably, per partition.
        durable = {
            r["partition"]: r["next_offset"]
            for r in await fetch(
                dsn,
                "SELECT partition, next_offset FROM partition_progress WHERE topic = $1",
                settings.events_topic,
            )
        }
        lag = {p: offsets.get(p, 0) - durable.get(p, 0) for p in range(settings.events_partitions)}
        worker_id = f"{socket.gethostname()}:{worker.proc.pid}"

        async def reported() -> bool:
            rows = await fetch(dsn, "SELECT partitions, lag FROM worker_status")
            return [(sorted(r["partitions"]), orjson.loads(r["lag"])) for r in rows] == [
                (sorted(lag), {str(p): n for p, n in lag.items()})
            ]

        await wait_for(reported, 30, "the worker to report its lag on every partition")

        async def completeness() -> dict[str, str]:
            rows = await fetch(dsn, "SELECT hour, complete FROM hour_completeness")
            return {
                r["hour"].strftime("%Y-%m-%dT%H:00:00Z"): "complete"
                if r["complete"]
                else "incomplete"
                for r in rows
            }

        before = await completeness()
        dom = await rendered(gw.url + "/live")
        after = await completeness()  # an hour may complete meanwhile: either is right

        status = dom.one(id="status")
        assert status.attrs["data-state"] == "ok", status.text
        assert dom.one(id="updated").text.startswith("Updated "), status.text
        assert "shown" not in dom.one(id="message").attrs.get("class", "")

        # Events: per series in the table, per hour in the chart's bars.
        table = dom.one("table", id="series-table")
        rows = {
            (tr.attrs["data-channel"], tr.attrs["data-event-name"]): number(
                tr.one("td", data_total=None).text
            )
            for tr in table.all("tr", data_channel=None)
        }
        assert rows == dict(published.by_series)
        assert number(dom.one(data_kpi="events").text) == sum(published.by_series.values())
        bars = {t.text for t in dom.one(id="events-chart").all("title")}
        for (hh, channel, name), count in published.by_hour.items():
            assert f"{hh} UTC · {channel} · {name}: {count}" in bars, (hh, channel, name, bars)

        # Agent runs: 3 started, 2 succeeded, 1 failed.
        assert dom.one(data_kpi="total_runs").text == "3"
        assert (dom.one(data_kpi="succeeded").text, dom.one(data_kpi="failed").text) == ("2", "1")
        assert dom.one(data_kpi="success_rate").text == f"{200 / 3:.1f}%"
        assert dom.one(data_kpi="total_cost_usd").text == "$0.75"
        assert dom.one(data_kpi="avg_latency_ms").text == "1,000 ms"
        # Nearest-rank percentiles of {800, 1200}: 800, 1200, 1200, from the histograms
        # (within their documented error, and the page's rounding to whole ms).
        shown = dom.one(data_kpi="latency_percentiles").text.removesuffix(" ms").split(" · ")
        for text, exact in zip(shown, (800, 1200, 1200), strict=True):
            assert abs(number(text) - exact) <= exact * latency.MAX_RELATIVE_ERROR + 0.5, shown

        # Lag per partition, and which worker owns each.
        lag_rows = {
            int(tr.attrs["data-partition"]): (
                number(tr.one("td", data_lag=None).text),
                tr.all("td")[-1].text,
            )
            for tr in dom.one("table", id="lag-table").all("tr", data_partition=None)
        }
        assert lag_rows == {p: (n, worker_id) for p, n in lag.items()}
        assert number(dom.one(data_kpi="lag").text) == sum(lag.values())

        # Dead letters by reason.
        dlq = {
            tr.attrs["data-reason"]: number(tr.one("td", data_total=None).text)
            for tr in dom.one("table", id="dlq-table").all("tr", data_reason=None)
        }
        assert dlq == published.dead_letters
        assert number(dom.one(data_kpi="dead").text) == sum(published.dead_letters.values())

        # Completeness: each hour with events as hour_completeness says, the others empty.
        cells = {
            c.attrs["data-hour"]: c.attrs["data-state"]
            for c in dom.one(id="complete-chart").all("rect", data_state=None)
        }
        assert len(cells) == 24
        assert {h: s for h, s in cells.items() if s != "empty"} in (before, after)

        ARTIFACT.parent.mkdir(exist_ok=True)
        ARTIFACT.unlink(missing_ok=True)
        await run_chromium(
            "--virtual-time-budget=7000",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            f"--screenshot={ARTIFACT}",
            gw.url + "/live",
        )
    data = ARTIFACT.read_bytes()
    assert png_size(data) == WINDOW
    assert len(data) > 30_000, f"the screenshot is suspiciously small ({len(data)} bytes)"
    print(f"\nlive page screenshot: {ARTIFACT}")


class DevTools:
    """Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
    commands on its fd 3, answers and events on its fd 4, JSON ending in NUL): the
    standard library only. Blocking: run it in a thread."""

    def __init__(self) -> None:
        self.profile = tempfile.mkdtemp(prefix="live-page-chromium-")
        # Chromium's ends at descriptors >= 10, so that moving them to 3 and 4 (the
        # shell does, for Chromium) never overwrites one with the other.
        reading, self._out = os.pipe()
        self._in, writing = os.pipe()
        to_chrome = fcntl.fcntl(reading, fcntl.F_DUPFD, 10)
        from_chrome = fcntl.fcntl(writing, fcntl.F_DUPFD, 10)
        os.close(reading)
        os.close(writing)
        self.proc = subprocess.Popen(
            [
                "bash",  # dash refuses descriptors above 9 in redirections
                "-c",
                f'exec "$@" 3<&{to_chrome} 4>&{from_chrome} {to_chrome}<&- {from_chrome}>&-',
                "sh",
                chromium(),
                *CHROMIUM_FLAGS,
                f"--user-data-dir={self.profile}",
                f"--window-size={WINDOW[0]},{WINDOW[1]}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            pass_fds=(to_chrome, from_chrome),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome)
        os.close(from_chrome)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=self.target, flatten=True)[
            "sessionId"
        ]
        self._other: str | None = None
        for domain in ("Page", "Runtime", "Network"):
            self.call(f"{domain}.enable", session=self.session)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._out)
        self.proc.kill()
        self.proc.wait(10)
        os.close(self._in)
        shutil.rmtree(self.profile, ignore_errors=True)

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        os.write(self._out, orjson.dumps(message) + b"\0")
        deadline = time.monotonic() + 30
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                result: dict[str, Any] = reply["result"]
                return result
            self.events.append(reply)

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._in], [], [], max(left, 0))
            assert ready, "chromium did not answer within 30 s"
            chunk = os.read(self._in, 1 << 16)
            assert chunk, "chromium closed its DevTools pipe"
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        parsed: dict[str, Any] = orjson.loads(raw)
        return parsed

    def page(self, method: str, **params: Any) -> dict[str, Any]:
        return self.call(method, session=self.session, **params)

    def js(self, expression: str) -> Any:
        result = self.page("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait(self, expression: str, what: str, timeout: float = 20) -> Any:
        """Poll a JavaScript expression until it is truthy (the page works in real time)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.page("Runtime.evaluate", expression=expression, returnByValue=True)
            # An exception: the page is still loading (the element is not there yet).
            value = None if "exceptionDetails" in result else result["result"].get("value")
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {result}"
            time.sleep(0.1)

    def type_key(self, key: str) -> None:
        """Type into the key field as a user would, and press the form's button."""
        self.js("document.getElementById('key').focus()")
        self.page("Input.insertText", text=key)
        self.js("document.querySelector('#keyform button').click()")

    def hide(self) -> None:
        """Hide the page as a user does: another tab comes to the front."""
        self._other = self.call("Target.createTarget", url="about:blank")["targetId"]

    def show(self) -> None:
        assert self._other is not None
        self.call("Target.activateTarget", targetId=self.target)
        self.call("Target.closeTarget", targetId=self._other)
        self._other = None

    def live_requests(self) -> list[dict[str, Any]]:
        """The page's requests to /v1/live so far (URL and headers as sent)."""
        return [
            e["params"]["request"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent"
            and "/v1/live" in e["params"]["request"]["url"]
        ]


STATE = "document.getElementById('status').getAttribute('data-state')"
ASKS_FOR_KEY = "document.getElementById('keyform').classList.contains('shown')"
STORED = "sessionStorage.getItem('event-pipeline-live-api-key')"


async def test_the_live_page_asks_for_an_api_key_and_keeps_it_in_the_tab(
    settings: Settings,
) -> None:
    """With API_KEYS set: the page asks for a key, refuses a wrong one and a tenant-scoped
    one, sends the right one as a Bearer header (never in a URL), keeps it across a reload
    in sessionStorage, and forgets it on request."""
    chromium()
    admin, scoped = "a" * 32, "s" * 32
    gs = gateway_settings(settings, api_keys=keys(admin, f"{scoped}=acme"))
    async with serve(gs) as gw:

        def scenario() -> None:
            tools = DevTools()
            try:
                tools.page("Page.navigate", url=gw.url + "/live")
                tools.wait(f"{ASKS_FOR_KEY} && {STATE} === 'error'", "the key prompt")
                assert "needs an API key" in tools.js(
                    "document.getElementById('message').innerText"
                )
                assert tools.js(STORED) is None

                tools.type_key("w" * 32)
                tools.wait(
                    f"{ASKS_FOR_KEY} && /was refused/.test(document.body.innerText)",
                    "the wrong key to be refused",
                )
                assert tools.js(STORED) is None, "a refused key must not be kept"

                tools.type_key(scoped)
                tools.wait(
                    f"{ASKS_FOR_KEY} && /key for every tenant/.test(document.body.innerText)",
                    "the tenant-scoped key to be refused",
                )
                assert tools.js(STORED) is None, "a key the page cannot use must not be kept"

                tools.type_key(admin)
                tools.wait(f"{STATE} === 'ok'", "the data after the right key")
                assert not tools.js(ASKS_FOR_KEY)
                assert tools.js(STORED) == admin
                assert (
                    tools.js("document.querySelector('[data-kpi=\"events\"]').textContent") == "0"
                )

                tools.page("Page.reload")
                tools.wait(f"{STATE} === 'ok'", "the data after a reload, without asking again")
                assert not tools.js(ASKS_FOR_KEY)

                # Hidden, the page stops polling (it refreshes every 5 s when shown):
                # watch it for longer than that, then show it again.
                tools.hide()
                tools.wait(f"{STATE} === 'paused'", "the page to pause while hidden")
                tools.js("1")  # read the events so far
                polled = len(tools.live_requests())
                time.sleep(6.5)
                tools.js("1")
                assert len(tools.live_requests()) == polled, "polled while hidden"
                tools.show()
                tools.wait(f"{STATE} === 'ok'", "a refresh once shown again")
                assert len(tools.live_requests()) > polled

                sent = tools.live_requests()
                assert sent, "the page made no request to /v1/live"
                for request in sent:
                    for secret in (admin, scoped):
                        assert secret not in request["url"], "an API key in a URL"
                with_key = [r["headers"].get("Authorization") for r in sent]
                assert f"Bearer {admin}" in with_key, with_key
                assert f"Bearer {scoped}" in with_key, with_key

                tools.js("document.getElementById('forget').click()")
                tools.wait(ASKS_FOR_KEY, "the prompt after forgetting the key")
                assert tools.js(STORED) is None
            finally:
                tools.close()

        await asyncio.to_thread(scenario)
