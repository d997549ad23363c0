"""The dashboard's deployments: pages, JSON API, pause/resume and "run now" (with their
guards against cross-site requests), and the deployment webhook mounted in the
dashboard. A real store file with deployments applied by ``Deployment.build_from_flow
(...).apply()``, a real uvicorn (``dashboard_server.py``)."""

from __future__ import annotations

import html
import json
import re
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard_server import Served, deployment_flows, serve_dashboard

from flowcore.deployments import Deployment
from flowcore.deployments.store import DeploymentStore
from flowcore.deployments.views import summary
from flowcore.schedules import CronSchedule, IntervalSchedule

TOKEN = "test-api-token-0123456789"

@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FLOWCORE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FLOWCORE_API_TOKEN", raising=False)
    return tmp_path / "home"


@pytest.fixture
def deployed(home: Path, tmp_path: Path) -> dict[str, str]:
    """Two deployments in ``home/history.db``: a daily Berlin cron and a paused interval."""
    flows = deployment_flows(tmp_path)
    nightly = Deployment.build_from_flow(
        flow=flows.etl_workflow, name="nightly", schedule=CronSchedule(cron="0 2 * * *", timezone="Europe/Berlin"),
        parameters={"n": 4}, concurrency_limit=2, overlap="skip", catchup="all",
    ).apply()
    hourly = Deployment.build_from_flow(
        flow=flows.reports, name="hourly", schedule=IntervalSchedule(interval=3600), paused=True,
    ).apply()
    return {"nightly": nightly, "hourly": hourly}


@pytest.fixture
def served(home: Path, deployed: dict[str, str]) -> Iterator[Served]:
    with serve_dashboard(home / "history.db", api_token=TOKEN) as running:
        yield running


@pytest.fixture
def store(home: Path, deployed: dict[str, str]) -> Iterator[DeploymentStore]:
    with DeploymentStore(home / "history.db") as opened:
        yield opened


NIGHTLY = "/deployments/etl%20workflow/nightly"


def rows(html: str, testid: str) -> list[str]:
    """The opening tags of the elements with this data-testid."""
    return re.findall(rf'<[^>]*data-testid="{testid}"[^>]*>', html)


def attribute(tag: str, name: str) -> str:
    found = re.search(rf'{name}="([^"]*)"', tag)
    assert found is not None, f"{name} not in {tag}"
    return found.group(1)


def action_token(served: Served) -> str:
    page = served.get("/deployments")
    found = re.search(r'<meta name="flowcore-csrf" content="([^"]+)">', page.text)
    assert found is not None
    return found.group(1)


def same_origin(served: Served, token: str) -> dict[str, str]:
    return {"Origin": served.url, "X-Flowcore-CSRF": token, "Accept": "application/json"}


# -- reading -------------------------------------------------------------------------------------


def test_the_deployments_page_lists_schedules_in_words_next_runs_and_policies(served: Served) -> None:
    page = served.get("/deployments")
    assert page.status == 200
    found = {attribute(tag, "data-deployment"): attribute(tag, "data-paused") for tag in rows(page.text, "deployment-row")}
    assert found == {"etl workflow/nightly": "false", "reports/hourly": "true"}
    assert "daily at 02:00 (Europe/Berlin)" in page.text
    assert "every 1h (UTC)" in page.text
    assert len(rows(page.text, "next-run")) == 3  # the paused one has none
    assert "overlap skip" in page.text and "catchup all" in page.text and "concurrency 2" in page.text
    assert len(rows(page.text, "pause-button")) == 1 and len(rows(page.text, "resume-button")) == 1
    assert 'href="/deployments"' in page.text  # the nav link
    assert rows(page.text, "trigger-feed") and not rows(page.text, "trigger-event")  # nothing fired yet

    detail = served.get(NIGHTLY)
    assert detail.status == 200
    times = [float(attribute(t, "data-time")) for t in rows(detail.text, "next-run")]
    assert len(times) == 10 and times == sorted(times)
    assert "CET" in detail.text or "CEST" in detail.text
    assert "&#34;n&#34;: 4" in detail.text or '"n": 4' in detail.text
    assert rows(detail.text, "run-now-button") and rows(detail.text, "pause-button")

    fragment = served.get("/deployments?fragment=deployments_table")
    assert fragment.status == 200 and "<html" not in fragment.text and rows(fragment.text, "deployment-row")

    missing = served.get("/deployments/etl%20workflow/nope")
    assert missing.status == 404 and "no deployment" in missing.text


def test_the_json_api_says_what_flowcore_deployment_inspect_says(served: Served, store: DeploymentStore,
                                                                 deployed: dict[str, str]) -> None:
    listing = served.get("/api/deployments").json()
    assert [d["full_name"] for d in listing] == ["etl workflow/nightly", "reports/hourly"]
    assert len(listing[0]["next_runs"]) == 3 and listing[1]["next_runs"] == []
    assert listing[0]["schedules"][0]["words"] == "daily at 02:00 (Europe/Berlin)"
    assert served.get("/api/deployments?next=1").json()[0]["next_runs"] == listing[0]["next_runs"][:1]

    one = served.get("/api/deployments/etl%20workflow/nightly").json()
    expected = summary(store, store.deployment(deployed["nightly"]))
    assert one.keys() == expected.keys()
    assert one["id"] == deployed["nightly"] and one["parameters"] == {"n": 4}
    assert [r["time"] for r in one["next_runs"]] == [r["time"] for r in expected["next_runs"]]

    assert served.get("/api/deployments/reports/nope").status == 404
    assert "error" in served.get("/api/deployments/reports/nope").json()
    store.set_paused(deployed["hourly"], False)  # as `flowcore deployment resume` does
    feed = served.get("/api/trigger-feed?deployment=reports/hourly").json()["feed"]
    assert [e["outcome"] for e in feed] == ["resumed"]
    assert served.get("/api/trigger-feed").json()["feed"][0]["deployment_id"] == deployed["hourly"]
    assert served.get("/api/trigger-feed?limit=zero").status == 400


# -- actions: pause, resume, run now -----------------------------------------------------------


def test_a_cross_origin_or_tokenless_post_is_refused_and_changes_nothing(served: Served,
                                                                         store: DeploymentStore) -> None:
    token = action_token(served)
    attempts = [
        {"Origin": "http://evil.example", "X-Flowcore-CSRF": token},  # another site (with a leaked token)
        {"Origin": "null", "X-Flowcore-CSRF": token},  # a sandboxed frame
        {"Referer": "http://evil.example/page", "X-Flowcore-CSRF": token},
        {"Origin": served.url},  # same origin, no token
        {"Origin": served.url, "X-Flowcore-CSRF": "guessed"},
    ]
    for headers in attempts:
        answer = served.post(NIGHTLY + "/pause", "", headers={**headers, "Accept": "application/json"})
        assert answer.status == 403, headers
        assert "refused" in answer.json()["error"] or "token" in answer.json()["error"]
    # a classic cross-site form post: the token in the form does not help without the origin
    form = served.post(NIGHTLY + "/run", urllib.parse.urlencode({"csrf": token, "parameters": "{}"}),
                       headers={"Origin": "http://evil.example"})
    assert form.status == 403 and "cross-origin" in form.text
    assert served.get(NIGHTLY + "/pause").status == 405  # GET never acts
    assert not store.find("etl workflow/nightly").paused
    assert store.runs(store.find("etl workflow/nightly").id) == []


def test_pause_and_resume_roundtrip_through_the_store(served: Served, store: DeploymentStore) -> None:
    token = action_token(served)
    events: list[bytes] = []
    listener = threading.Thread(target=lambda: events.append(
        urllib.request.urlopen(served.url + "/api/events?timeout=4", timeout=10).read()))
    listener.start()
    time.sleep(1.0)  # the stream has taken its first look
    paused = served.post(NIGHTLY + "/pause", "", headers=same_origin(served, token))
    assert paused.status == 200 and paused.json() == {
        "deployment": "etl workflow/nightly", "flow": "etl workflow", "name": "nightly", "paused": True}
    assert store.find("etl workflow/nightly").paused
    listener.join()
    assert b"event: change" in events[0]  # live pages learn of it over the existing stream

    page = served.get("/deployments?fragment=deployments_table").text
    tag = next(t for t in rows(page, "deployment-row") if 'data-deployment="etl workflow/nightly"' in t)
    assert attribute(tag, "data-paused") == "true"
    assert served.get("/api/deployments/etl%20workflow/nightly").json()["next_runs"] == []

    # a plain HTML form post (no script): same guard, answered by a redirect back to the page
    resumed = served.post(NIGHTLY + "/resume", urllib.parse.urlencode({"csrf": token}),
                          headers={"Origin": served.url})
    assert resumed.status == 303 and resumed.headers["location"] == NIGHTLY
    assert not store.find("etl workflow/nightly").paused
    outcomes = [e.outcome for e in store.feed(store.find("etl workflow/nightly").id)]
    assert outcomes[:2] == ["resumed", "paused"]
    assert served.post("/deployments/etl%20workflow/nightly/explode", "",
                       headers=same_origin(served, token)).status == 400


def test_run_now_queues_a_manual_run_with_parameters(served: Served, store: DeploymentStore,
                                                    deployed: dict[str, str]) -> None:
    token = action_token(served)
    headers = same_origin(served, token)
    queued = served.post(NIGHTLY + "/run", urllib.parse.urlencode(
        {"parameters": '{"label": "by hand"}', "request_id": "abc123"}), headers=headers)
    assert queued.status == 201, queued.text
    body = queued.json()
    assert body["created"] is True and body["state"] == "Scheduled"
    assert body["parameters"] == {"n": 4, "label": "by hand"}  # merged over the defaults
    (run,) = store.runs(deployed["nightly"])
    assert run.id == body["id"] and run.kind == "manual" and run.state == "Scheduled"
    # the same form submitted twice (a double click, a retried request) queues one run
    again = served.post(NIGHTLY + "/run", urllib.parse.urlencode(
        {"parameters": '{"label": "by hand"}', "request_id": "abc123"}), headers=headers)
    assert again.status == 200 and again.json()["id"] == run.id and again.json()["created"] is False
    # a JSON body works too; a paused deployment still takes a manual run (as the CLI's)
    served.post(NIGHTLY + "/pause", "", headers=headers)
    json_run = served.post(NIGHTLY + "/run", {"parameters": {"n": 7}}, headers=headers)
    assert json_run.status == 201 and json_run.json()["parameters"]["n"] == 7

    bad_name = served.post(NIGHTLY + "/run", {"parameters": {"m": 1}}, headers=headers)
    assert bad_name.status == 422 and "no parameter 'm'" in bad_name.json()["error"]
    bad_json = served.post(NIGHTLY + "/run", urllib.parse.urlencode({"parameters": "{n: 1"}), headers=headers)
    assert bad_json.status == 400 and "not JSON" in bad_json.json()["error"]
    assert len(store.runs(deployed["nightly"])) == 2

    page = served.get(NIGHTLY).text
    runs = rows(page, "deployment-run")
    assert {attribute(t, "data-run-id") for t in runs} == {run.id, json_run.json()["id"]}
    assert {attribute(t, "data-state") for t in runs} == {"Scheduled"}


def test_parameters_with_markup_and_accents_read_as_written(served: Served, store: DeploymentStore,
                                                          deployed: dict[str, str]) -> None:
    # escaped once for HTML (no script runs), but shown as the user wrote them: not as
    # JSON-in-<script> escapes (\u003cb\u003e, Z\u00fcrich)
    label = "<b>Zürich & co</b>"
    headers = same_origin(served, action_token(served))
    queued = served.post(NIGHTLY + "/run", {"parameters": {"label": label}}, headers=headers)
    assert queued.status == 201, queued.text
    page = served.get(NIGHTLY).text
    assert "<b>Zürich" not in page  # escaped
    shown = [html.unescape(c) for c in re.findall(r'<code class="small">(.*?)</code>', page)]
    assert json.dumps({"label": label, "n": 4}, ensure_ascii=False, sort_keys=True) in shown
    assert "\\u003c" not in page and "\\u00fc" not in page
    # the run-now box starts from the defaults, as JSON a person can edit
    box = re.search(r'<textarea[^>]*data-testid="run-now-parameters"[^>]*>(.*?)</textarea>', page, re.S)
    assert box is not None and json.loads(html.unescape(box.group(1))) == {"n": 4}


def test_a_flow_named_with_a_slash_has_a_deployment_page_actions_and_webhook(home: Path, tmp_path: Path,
                                                                           deployed: dict[str, str]) -> None:
    # "team/etl/daily": the deployment's name is the last part, the flow's the rest
    flows = deployment_flows(tmp_path)
    dep_id = Deployment.build_from_flow(flows.team_etl, "daily").apply()
    with serve_dashboard(home / "history.db", api_token=TOKEN) as served, \
            DeploymentStore(home / "history.db") as store:
        listed = served.get("/deployments").text
        link = re.search(r'href="(/deployments/team[^"]*)"', listed)
        assert link is not None
        page = served.get(link.group(1))
        assert page.status == 200 and "team/etl/daily" in page.text, (link.group(1), page.status)
        assert served.get("/api/deployments/team%2Fetl/daily").json()["full_name"] == "team/etl/daily"
        headers = same_origin(served, action_token(served))
        paused = served.post(link.group(1) + "/pause", "", headers=headers)
        assert paused.status == 200 and paused.json()["paused"] is True
        assert store.find("team/etl/daily").paused
        queued = served.post(link.group(1) + "/run", {"parameters": {"n": 2}}, headers=headers)
        assert queued.status == 201
        assert served.post(link.group(1) + "/resume", "", headers=headers).json()["paused"] is False
        assert served.get(link.group(1) + "/pause").status == 405  # GET never acts
        # no schedule: said so, not as item "1." of the next runs
        shown = re.search(r"<h2>Next runs</h2>(.*?)<h2>", served.get(link.group(1)).text, re.S)
        assert shown is not None and "no schedule" in shown.group(1) and "<li" not in shown.group(1)
        hooked = served.post("/api/deployments/team%2Fetl/daily/runs", {"n": 3},
                             headers={"Authorization": f"Bearer {TOKEN}"})
        assert hooked.status == 201 and hooked.json()["deployment"] == "team/etl/daily"
        assert len(store.runs(dep_id)) == 2


# -- the webhook, mounted ------------------------------------------------------------------------


def test_the_webhook_is_served_by_the_dashboard_with_its_token_rules(served: Served, store: DeploymentStore,
                                                                     deployed: dict[str, str]) -> None:
    path = "/api/deployments/etl%20workflow/nightly/runs"
    assert served.post(path, {"n": 2}).status == 401
    wrong = served.post(path, {"n": 2}, headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401 and wrong.headers.get("www-authenticate") == "Bearer"
    # the page's action token is not an API token
    assert served.post(path, {"n": 2}, headers={"X-Flowcore-CSRF": action_token(served)}).status == 401
    auth = {"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": "delivery-1"}
    created = served.post(path, {"n": 2}, headers=auth)
    assert created.status == 201 and created.json()["created"] is True
    repeated = served.post(path, {"n": 2}, headers=auth)
    assert repeated.status == 200 and repeated.json()["id"] == created.json()["id"]
    (run,) = store.runs(deployed["nightly"])
    assert run.kind == "webhook" and run.parameters == {"n": 2}
    shown = urllib.request.Request(served.url + f"/api/deployment-runs/{run.id}",
                                   headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(shown, timeout=10) as answer:
        assert answer.status == 200
    feed = served.get("/api/trigger-feed?deployment=etl workflow/nightly".replace(" ", "%20")).json()["feed"]
    assert [(e["kind"], e["outcome"]) for e in feed[:2]] == [("webhook", "deduplicated"), ("webhook", "fired")]
    page = served.get("/deployments").text
    assert any(attribute(t, "data-kind") == "webhook" for t in rows(page, "trigger-event"))


def test_the_webhook_refuses_nan_and_infinity_without_queueing_a_run(served: Served, store: DeploymentStore,
                                                                    deployed: dict[str, str]) -> None:
    """Python's json reads NaN, Infinity and 1e999; they are not JSON, the run could not
    be answered in JSON (it was a 500 after the run was queued: a retried delivery ran twice)."""
    path = "/api/deployments/etl%20workflow/nightly/runs"
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    for body in (b'{"n": NaN}', b'{"n": 1e999}', b'{"n": -Infinity}', b'{"n": [1, {"x": NaN}]}'):
        answer = served.post(path, body, headers=auth)
        assert answer.status == 400, (body, answer.status, answer.text)
        assert "not a finite number" in answer.json()["error"], answer.text
    wrong = served.post(path, b'{"n": "many"}', headers=auth)
    assert wrong.status == 422 and "parameter 'n' expects int, got 'many'" in wrong.json()["error"], wrong.text
    assert store.runs(deployed["nightly"]) == []
    assert served.post(path, b'{"n": 1.5e3}', headers=auth).status == 201


def test_a_webhook_url_missing_a_part_gets_a_404_that_shows_the_right_one(served: Served) -> None:
    """POST /api/deployments/nightly/runs (the flow name left out) matched the GET route
    of one deployment and got a bare 405 "Method Not Allowed"."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/api/deployments/nightly/runs", "/api/deployments/etl%20workflow/nightly"):
        answer = served.post(path, {"n": 1}, headers=auth)
        assert answer.status == 404, (path, answer.status, answer.text)
        assert "POST /api/deployments/<flow>/<deployment>/runs" in answer.json()["error"], answer.text
    assert served.post("/api/deployments/nightly/runs", {"n": 1}).status == 401


def test_the_webhook_refuses_a_body_larger_than_a_megabyte(served: Served, store: DeploymentStore,
                                                           deployed: dict[str, str]) -> None:
    """The webhook read any body whole into memory (the dashboard's own forms stop at
    1 MB): 413 now, before reading it, and no run."""
    import http.client

    # The headers alone: the answer comes before the body is read (a client that
    # writes the whole body first may get EPIPE when the server closes; curl does not).
    address = urllib.parse.urlsplit(served.url)
    connection = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port, timeout=30)
    try:
        connection.putrequest("POST", "/api/deployments/etl%20workflow/nightly/runs")
        connection.putheader("Authorization", f"Bearer {TOKEN}")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", "2000000")
        connection.endheaders()
        answer = connection.getresponse()
        status, body = answer.status, answer.read()
    finally:
        connection.close()
    assert status == 413, (status, body[:200])
    assert "larger than 1000000 bytes" in json.loads(body)["error"], body[:200]
    assert store.runs(deployed["nightly"]) == []


def test_the_token_comes_from_the_environment_or_the_home(home: Path, deployed: dict[str, str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWCORE_API_TOKEN", "from-the-env")
    with serve_dashboard(home / "history.db") as running:
        path = "/api/deployments/reports/hourly/resume"
        assert running.post(path, "", headers={"Authorization": "Bearer from-the-env"}).status == 200
    monkeypatch.delenv("FLOWCORE_API_TOKEN")
    with serve_dashboard(home / "history.db") as running:
        saved = (home / "api-token").read_text().strip()
        assert running.post("/api/deployments/reports/hourly/pause", "",
                            headers={"Authorization": f"Bearer {saved}"}).status == 200
    with serve_dashboard(home / "history.db", webhook=False) as running:
        # not served: 405 since a flow name may hold "/" (the GET of a deployment
        # "reports/hourly" named "pause" has this path), 404 before
        assert running.post("/api/deployments/reports/hourly/pause", "",
                            headers={"Authorization": f"Bearer {saved}"}).status in (404, 405)
