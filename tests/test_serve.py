"""`ddm serve`: the completions API equals `ddm.sample` bit for bit, alone and under concurrent load, and
bad requests get OpenAI-shaped errors without taking the server down (`ddm.serve`)."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import torch
from ddm.graphs import Absorbing
from ddm.model import ModelConfig, ScoreModel
from ddm.sampling import sample
from ddm.schedules import LogLinear
from ddm.serve import Scheduler
from ddm.tokenizers import CharTokenizer

fastapi = pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx (the test client) is not installed")
from ddm.serve.app import create_app  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

CHARS = "abcde "


def _model(time_conditioning: bool = False) -> ScoreModel:
    torch.manual_seed(0)
    tok = CharTokenizer(CHARS)
    cfg = ModelConfig(hidden=32, heads=2, blocks=1, cond_dim=16, seq_len=16, dropout=0.0,
                      time_conditioning=time_conditioning, subs=not time_conditioning)  # fmt: skip
    return ScoreModel(cfg, Absorbing(tok.vocab_size), LogLinear(), tokenizer=tok).eval()


@pytest.fixture(scope="module")
def model() -> ScoreModel:
    return _model()


@pytest.fixture(scope="module")
def client(model: ScoreModel):
    with TestClient(create_app(model, model_name="tiny")) as c:
        yield c


def _solo(model: ScoreModel, prompt: str = "", max_tokens: int = 8, n: int = 1, **kw) -> list[str]:
    """What `ddm.sample` alone gives for the request: the decoded generated span of each row."""
    tok = model.tokenizer
    ids = tok.encode(prompt)
    kw.setdefault("steps", 32)
    kw.setdefault("predictor", "analytic")
    x = sample(model, batch_size=n, seq_len=len(ids) + max_tokens, prefix=ids or None, **kw)
    return [tok.decode(r[len(ids) : len(ids) + max_tokens]) for r in x.tolist()]


def _events(lines) -> list[dict]:
    out = []
    for line in lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[6:]))
    return out


def test_completion_equals_sample(client, model) -> None:
    body = dict(prompt="ab", max_tokens=8, seed=3, steps=10, temperature=0.8, top_k=3)
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["object"] == "text_completion" and got["choices"][0]["finish_reason"] == "length"
    want = _solo(model, "ab", 8, seed=3, steps=10, temperature=0.8, top_k=3)
    assert [c["text"] for c in got["choices"]] == want
    assert got["usage"]["completion_tokens"] == 8 and got["usage"]["prompt_tokens"] == 2


@pytest.mark.parametrize("predictor,extra", [("confidence", {"order": "margin"}), ("first_hitting", {}),
                                             ("euler", {"top_p": 0.9})])  # fmt: skip
def test_n_and_predictors_equal_sample(client, model, predictor, extra) -> None:
    body = dict(prompt="a", max_tokens=10, n=3, seed=7, steps=6, predictor=predictor, **extra)
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    texts = [c["text"] for c in sorted(r.json()["choices"], key=lambda c: c["index"])]
    assert texts == _solo(model, "a", 10, n=3, seed=7, steps=6, predictor=predictor, **extra)


def test_stream_shows_the_canvas_and_ends_with_the_text(client, model) -> None:
    body = dict(prompt="b", max_tokens=8, seed=5, steps=6, stream=True)
    with client.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = _events(r.iter_lines())
    canvases = [e["choices"][0]["canvas"] for e in events if e["choices"][0]["finish_reason"] is None]
    assert len(canvases) >= 3  # one per network call
    assert all(p is None for p in canvases[0])  # all masked before the first call
    assert sum(p is None for p in canvases[-1]) < 8
    final = events[-1]["choices"][0]
    assert final["finish_reason"] == "length"
    assert "".join(e["choices"][0]["text"] for e in events) == final["text"]  # deltas join to the text
    assert final["text"] == _solo(model, "b", 8, seed=5, steps=6)[0]


def test_stop_sequence_cuts_the_text(client, model) -> None:
    full = _solo(model, "", 12, seed=11, steps=8)[0]
    stop = full[3:5]
    r = client.post("/v1/completions", json=dict(max_tokens=12, seed=11, steps=8, stop=stop))
    choice = r.json()["choices"][0]
    assert choice["text"] == full[: full.find(stop)] and choice["finish_reason"] == "stop"


@pytest.mark.parametrize(
    "body,status,needle",
    [
        (b"{not json", 400, "not valid JSON"),
        (json.dumps({"max_tokens": "8"}).encode(), 400, "max_tokens"),
        (json.dumps({"max_tokens": -1}).encode(), 400, "max_tokens"),
        (json.dumps({"prompt": "abz"}).encode(), 400, "z"),
        (json.dumps({"n": 99}).encode(), 400, "n must"),
        (json.dumps({"prompt": "a", "max_tokens": 16}).encode(), 400, "max_tokens"),
        (json.dumps({"temperature": -1}).encode(), 400, "temperature"),
        (json.dumps({"predictor": "nope"}).encode(), 400, "predictor"),
        (json.dumps({"checkpoint": "/etc/passwd"}).encode(), 400, "unknown field"),
        (json.dumps({"model": "other"}).encode(), 404, "not served"),
        (json.dumps({"prompt": "a" * 70000}).encode(), 413, "limit"),
    ],
)
def test_bad_input_gets_an_openai_error(client, body, status, needle) -> None:
    r = client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] and set(err) == {"message", "type", "param", "code"}
    assert client.get("/health").json()["status"] == "ok"  # still up


def test_api_key_and_models(model) -> None:
    with TestClient(create_app(model, model_name="tiny", api_key="s3cret")) as c:
        assert c.post("/v1/completions", json={}).status_code == 401
        bad = c.get("/v1/models", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
        ok = c.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["data"][0]["id"] == "tiny"
        assert c.get("/health").status_code == 200  # open
        page = c.get("/")
        assert (
            page.status_code == 200
            and "/v1/completions" in page.text
            and "http" not in page.text.split("<script>")[1].replace("http_", "")
        )  # fmt: skip  (no CDN: the script fetches only this server)


class _Gated(torch.nn.Module):
    """The model behind a gate: a forward waits until the test opens it."""

    def __init__(self, model: ScoreModel) -> None:
        super().__init__()
        self.inner = model
        self.gate = threading.Event()
        self.gate.set()
        for name in ("graph", "schedule", "seq_len", "time_independent", "tokenizer"):
            setattr(self, name, getattr(model, name))

    def forward(self, x, sigma):
        self.gate.wait(10)
        return self.inner(x, sigma)


def test_queue_full_is_503(model) -> None:
    gated = _Gated(model)
    sched = Scheduler(gated, max_active=1, max_queue=1)
    with TestClient(create_app(gated, scheduler=sched)) as c:
        gated.gate.clear()
        results: list[int] = []
        body = dict(max_tokens=4, steps=2, seed=0)

        def post() -> None:
            results.append(c.post("/v1/completions", json=body).status_code)

        threads = [threading.Thread(target=post) for _ in range(2)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 5
        while sched.admitted < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        r = c.post("/v1/completions", json=body)
        assert r.status_code == 503 and r.json()["error"]["code"] == "queue_full"
        gated.gate.set()
        for t in threads:
            t.join()
        assert results == [200, 200]


# ---- a live server -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(model):
    uvicorn = pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(model, model_name="tiny", scheduler=Scheduler(model, max_active=16))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    yield f"http://127.0.0.1:{port}", app
    server.should_exit = True
    thread.join(timeout=10)


def test_openai_client(live, model) -> None:
    openai = pytest.importorskip("openai", reason="the openai client is not installed")
    url, _ = live
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    extra = {"steps": 12}
    r = client.completions.create(model="tiny", prompt="ca", max_tokens=9, seed=2, extra_body=extra)
    assert r.choices[0].text == _solo(model, "ca", 9, seed=2, steps=12)[0]
    r = client.completions.create(model="tiny", prompt="", max_tokens=6, n=2, seed=4, extra_body=extra)
    assert [c.text for c in sorted(r.choices, key=lambda c: c.index)] == _solo(model, "", 6, n=2, seed=4,
                                                                                 steps=12)  # fmt: skip
    chunks = client.completions.create(
        model="tiny", prompt="d", max_tokens=7, seed=9, stream=True, extra_body=extra
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == _solo(model, "d", 7, seed=9, steps=12)[0]


def test_concurrent_clients_each_get_their_solo_tokens(live, model) -> None:
    """16 clients with different seeds, predictors, lengths and options at once."""
    url, app = live
    predictors = ["analytic", "confidence", "first_hitting", "euler"]
    bodies = [dict(prompt="ab"[: i % 3], max_tokens=6 + i % 2 * 4, n=1 + i % 2, seed=100 + i, steps=6 + i,
                   predictor=predictors[i % 4], temperature=[1.0, 0.7][i % 2])
              for i in range(16)]  # fmt: skip
    got: dict[int, list[str]] = {}
    forwards = app.state.scheduler.forwards

    def run(i: int) -> None:
        r = httpx.post(f"{url}/v1/completions", json=bodies[i], timeout=60)
        assert r.status_code == 200, r.text
        assert i not in got  # not duplicated
        got[i] = [c["text"] for c in sorted(r.json()["choices"], key=lambda c: c["index"])]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(len(bodies)))  # none lost
    for i, b in enumerate(bodies):
        opts = {k: b[k] for k in ("seed", "steps", "predictor", "temperature")}
        assert got[i] == _solo(model, b["prompt"], b["max_tokens"], n=b["n"], **opts), i
    calls = 0  # the network calls of the requests run one at a time
    for b in bodies:
        n_prompt = len(b["prompt"])
        opts = {k: b[k] for k in ("seed", "steps", "predictor", "temperature")}
        prefix = model.tokenizer.encode(b["prompt"]) or None
        _, stats = sample(model, batch_size=b["n"], seq_len=n_prompt + b["max_tokens"], prefix=prefix,
                          return_stats=True, **opts)  # fmt: skip
        calls += stats.network_calls
    assert app.state.scheduler.forwards - forwards < calls  # rows of different requests shared forwards


def test_a_killed_stream_frees_its_rows(live, model) -> None:
    url, app = live
    body = dict(max_tokens=10, seed=1, steps=1000, stream=True, predictor="euler")
    with httpx.Client(timeout=30) as c, c.stream("POST", f"{url}/v1/completions", json=body) as r:
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data: ")
            if seen == 3:
                break  # the client goes away mid-stream
    deadline = time.monotonic() + 10
    while app.state.scheduler.admitted and time.monotonic() < deadline:
        time.sleep(0.02)
    assert app.state.scheduler.admitted == 0
    r = httpx.post(f"{url}/v1/completions", json=dict(max_tokens=5, seed=8, steps=4), timeout=30)
    assert r.json()["choices"][0]["text"] == _solo(model, "", 5, seed=8, steps=4)[0]


def test_time_dependent_model_batches_exactly() -> None:
    """Rows at different steps carry their own noise level through one forward."""
    model = _model(time_conditioning=True)
    sched = Scheduler(model, max_active=4)
    try:
        with TestClient(create_app(model, scheduler=sched)) as c:
            bodies = [dict(max_tokens=8, seed=s, steps=5 + s) for s in range(4)]
            out: dict[int, str] = {}

            def post(i: int) -> None:
                out[i] = c.post("/v1/completions", json=bodies[i]).json()["choices"][0]["text"]

            threads = [threading.Thread(target=post, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        for i, b in enumerate(bodies):
            assert out[i] == _solo(model, "", 8, seed=b["seed"], steps=b["steps"])[0]
    finally:
        sched.close()


def test_ddm_serve_command(tmp_path, monkeypatch, model) -> None:
    """`ddm serve` loads the checkpoint once, binds 127.0.0.1 by default and serves it."""
    uvicorn = pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")
    from ddm.cli import main
    from ddm.io import checkpoint
    from ddm.model import EMA

    config = {"model": model.config.to_dict(), "graph": model.graph.to_config(),
              "schedule": model.schedule.to_config(), "tokenizer": model.tokenizer.to_config(),
              "train": {}}  # fmt: skip
    path = checkpoint.save(tmp_path, 1, model=model, config=config, ema=EMA(model, 0.9),
                           optimizer=torch.optim.AdamW(model.parameters()))  # fmt: skip
    seen: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    assert main(["serve", "--checkpoint", str(path), "--max-n", "2", "--api-key", "k"]) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8000
    with TestClient(seen["app"]) as c:
        auth = {"Authorization": "Bearer k"}
        assert c.post("/v1/completions", json={"n": 3}, headers=auth).status_code == 400  # --max-n
        r = c.post("/v1/completions", json=dict(max_tokens=6, seed=2, steps=5), headers=auth)
        loaded = seen["app"].state.scheduler.model
        assert r.json()["choices"][0]["text"] == _solo(loaded, "", 6, seed=2, steps=5)[0]


# ---- the page's script, run by node against the live server (no browser here) ---------------------------

_DRIVER = r"""
const vm = require("vm");
const [base, script, values] = [process.argv[2], process.argv[3], JSON.parse(process.argv[4])];
const els = {};
let anon = 0;
function el(id) {
  if (!els[id]) els[id] = {id, value: values[id] ?? "", className: "", dataset: {}, style: {}, children: [],
    _text: "", appendChild(c) { this.children.push(c); }, addEventListener(ev, f) { this.handler = f; }};
  return els[id];
}
const masked = [];  // the masked count of each drawing of the canvas
Object.defineProperty(el("canvas"), "textContent", {
  get() { return this._text; },
  set(v) {
    this._text = v;
    if (this.children.length) masked.push(this.children.filter((c) => c.className === "mask").length);
    this.children = [];
  }});
globalThis.document = {getElementById: el, createElement: () => el("anon" + anon++)};
const realFetch = fetch;
globalThis.fetch = (url, opts) => realFetch(base + url, opts);
vm.runInThisContext(script);
el("go").handler().then(() => {
  const c = el("canvas");
  masked.push(c.children.filter((x) => x.className === "mask").length);
  console.log(JSON.stringify({final: c.dataset.final, masked, stats: el("stats").textContent}));
});
"""


def test_the_page_fills_the_canvas_live(live, model, tmp_path) -> None:
    """The page's own script (a DOM stub under node) streams a completion: the canvas changes at least 3
    times, from all masked to none, and the final text equals the API's for the same seed."""
    import shutil
    import subprocess

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the page's script cannot be run without a browser")
    url, _ = live
    page = httpx.get(f"{url}/").text
    script = page.split("<script>")[1].split("</script>")[0]
    driver = tmp_path / "driver.js"
    driver.write_text(_DRIVER)
    values = {"prompt": "ab", "max_tokens": "10", "steps": "6", "predictor": "analytic", "temperature": "1",
              "top_p": "1", "seed": "21", "order": "", "key": ""}  # fmt: skip
    out = subprocess.run([node, str(driver), url, script, json.dumps(values)], capture_output=True,
                         text=True, timeout=60, check=True)  # fmt: skip
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["masked"][0] == 10 and got["masked"][-1] == 0
    assert len(set(got["masked"])) >= 3, got  # the canvas changed at least 3 times before it completed
    api = httpx.post(
        f"{url}/v1/completions", json=dict(prompt="ab", max_tokens=10, steps=6, seed=21, top_p=1.0)
    )
    assert got["final"] == api.json()["choices"][0]["text"] == _solo(model, "ab", 10, seed=21, steps=6)[0]
    assert "network calls" in got["stats"]
