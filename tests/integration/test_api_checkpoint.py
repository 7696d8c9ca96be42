"""test_api_checkpoint.py - export and restore the whole state of a run.

export -> DELETE -> import must serve byte-identical statistics (every
source, domain, mixture and format) and a byte-identical re-export; an
import under another name serves the same; both continue identically;
invalid checkpoints get 400 and change nothing.
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nsd  # noqa: E402
from test_api_sync import make_step, reports  # noqa: E402

QUERIES = [{"source": "ema"}, {"source": "ema", "domain": "photo"}, {"source": "ema", "domain": "sketch"},
           {"source": "precise"}, {"source": "precise", "domain": "photo"}, {"source": "precise", "variance": "biased"},
           {"source": "ema", "mixture": "photo:0.7,sketch:0.3"}, {"source": "precise", "mixture": "photo:1,sketch:2"},
           {"source": "ema", "format": "safetensors"}, {"source": "precise", "format": "safetensors"}]
STATUS_KEYS = ("layers", "domains", "skipped_steps", "precise_generation")


def step_reports(s, data):
    reps = reports(s, data)
    reps[0]["domain"] = "photo"
    reps[1]["domain"] = "sketch"
    return reps


class Checkpoint(nsd.Case):

    def state(self, run):
        out = {}
        for q in QUERIES:
            r = self.c.stats(run, **q)
            out[str(q)] = (r.status, r.body)
        r = self.c.get(f"/v1/runs/{run}")
        body = r.json() if r.status == 200 else {}
        out["config"] = body.get("config")
        st = body.get("status", {})
        out["status"] = {k: st.get(k) for k in STATUS_KEYS}
        return out

    def same_state(self, s1, s2, a, b, desc):
        for k in s1:
            v1, v2 = s1[k], s2[k]
            if isinstance(v1, tuple):
                ok = v1[0] == 200 and v2[0] == 200 and v1[1].replace(a.encode(), b.encode()) == v2[1]
                self.check(ok, f"{desc}: stats {k} identical bytes", f"{v1[0]} {v1[1][:150]!r} vs {v2[0]} {v2[1][:150]!r}")
            else:
                self.check(v1 == v2 and v1 is not None, f"{desc}: {k} identical", f"{str(v1)[:300]} vs {str(v2)[:300]}")

    def test_export_delete_import(self):
        rng = np.random.default_rng(51)
        a = nsd.run_name("ckA")
        b = a.replace("ckA", "ckB")
        self.require(self.c.put(f"/v1/runs/{a}", {"world_size": 2, "momentum": 0.05, "ema_debias": True,
                                                 "sync_timeout_ms": 4321, "on_timeout": "drop"}).status == 201, "create")
        for s in range(1, 5):
            if s == 3:
                self.check_status(self.c.post(f"/v1/runs/{a}/precise/reset", {}), 200, "precise reset after step 2")
            data = make_step(rng, [int(rng.integers(2, 30)), int(rng.integers(2, 30))])
            for rep in step_reports(s, data):
                self.check_status(self.c.report(a, rep), 202, f"step {s} worker {rep['worker']}")
        s1 = self.state(a)
        r = self.c.get(f"/v1/runs/{a}/checkpoint")
        self.check_status(r, 200, "GET checkpoint", must=True)
        cp, cp_type = r.body, r.content_type or "application/json"
        self.check(r.is_json(), "the checkpoint is JSON", r.short(100))
        self.check_status(self.c.delete(f"/v1/runs/{a}"), 204, "DELETE the run")
        self.check_status(self.c.stats(a), 404, "its stats are gone", code="not_found")
        r = self.c.put(f"/v1/runs/{a}/checkpoint", cp, content_type=cp_type)
        self.check(r.status in (200, 201), "PUT checkpoint restores the deleted run (200/201)", r.short())
        self.same_state(s1, self.state(a), a, a, "restored")
        r2 = self.c.get(f"/v1/runs/{a}/checkpoint")
        self.check(r2.status == 200 and r2.body == cp, "re-export is byte-identical to the export",
                   f"{len(r2.body)} vs {len(cp)} bytes")
        r = self.c.put(f"/v1/runs/{b}/checkpoint", cp, content_type=cp_type)
        self.check(r.status in (200, 201), "PUT the checkpoint under another run name", r.short())
        self.same_state(s1, self.state(b), a, b, "imported as another run")
        # both continue identically, and the imported steps are finalized
        data = make_step(rng, [11, 17])
        for run in (a, b):
            for rep in step_reports(5, data):
                self.check_status(self.c.report(run, rep), 202, f"{run}: step 5 worker {rep['worker']}")
        self.same_state(self.state(a), self.state(b), a, b, "after one more step on both")
        before = self.snapshot(b)
        r = self.c.report(b, step_reports(4, data)[0])
        self.check_status(r, 409, "a report of imported step 4", code="stale_step")
        self.check_unchanged(before, b, "stale report after import")
        self.check_status(self.c.get("/v1/runs/no-such-run/checkpoint"), 404, "checkpoint of an unknown run",
                          code="not_found")

    def test_invalid_checkpoints(self):
        rng = np.random.default_rng(52)
        run = nsd.run_name("ckbad")
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 2}).status == 201, "create")
        for s in (1, 2):
            for rep in step_reports(s, make_step(rng, [9, 7])):
                self.check_status(self.c.report(run, rep), 202, f"step {s} worker {rep['worker']}")
        r = self.c.get(f"/v1/runs/{run}/checkpoint")
        self.require(r.status == 200 and r.is_json(), "GET checkpoint", r.short())
        cp = r.json()
        bad = [(b"not json", "not JSON"), (b"[]", "a JSON array"), (b"{}", "an empty object"),
               (r.body[: len(r.body) // 2], "truncated")]
        if isinstance(cp, dict) and "version" in cp:
            bad.append((json.dumps(dict(cp, version=999)).encode(), "version 999"))
        if isinstance(cp, dict) and "config" in cp:
            bad.append((json.dumps(dict(cp, config={"world_size": 0})).encode(), "config world_size 0"))
            cfg = cp["config"] if isinstance(cp["config"], dict) else {}
            bad.append((json.dumps(dict(cp, config=dict(cfg, world_size=65537))).encode(),
                        "config world_size 65537"))
            bad.append((json.dumps(dict(cp, config={k: v for k, v in cfg.items() if k != "momentum"}))
                        .encode(), "config without momentum"))
        for what, fn in (("a per-channel array one value short", short_array),
                         ("a negative variance or M2", negative_var),
                         ("a string where a number belongs", stringify_number)):
            edited = fn(json.loads(json.dumps(cp)))
            if edited is not None:
                bad.append((json.dumps(edited).encode(), what))
            else:
                self.check(False, f"(test) could not build a checkpoint with {what}", f"{str(cp)[:300]}")
        fresh = nsd.run_name("cknew")
        for body, what in bad:
            before = self.snapshot(run)
            r = self.c.put(f"/v1/runs/{run}/checkpoint", body, content_type="application/json")
            self.check_status(r, 400, f"import of a checkpoint with {what}", code="bad_request")
            self.check_unchanged(before, run, f"checkpoint with {what}")
            r = self.c.put(f"/v1/runs/{fresh}/checkpoint", body, content_type="application/json")
            self.check_status(r, 400, f"import of {what} into a new run", code="bad_request")
            self.check_status(self.c.get(f"/v1/runs/{fresh}"), 404, f"{what}: no run was created", code="not_found")


def _walk(node, fn, path=()):
    """Call fn(parent, key, value, path) on every member; stop at the first
    call that returns True."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for k, v in list(items):
        if fn(node, k, v, path + (k,)):
            return True
        if isinstance(v, (dict, list)) and _walk(v, fn, path + (k,)):
            return True
    return False


def short_array(cp):
    def fn(parent, k, v, path):
        if isinstance(k, str) and isinstance(v, list) and len(v) >= 2 and all(isinstance(x, (int, float)) for x in v) \
                and any(w in k for w in ("mean", "var", "m2")):
            parent[k] = v[:-1]
            return True
        return False
    return cp if _walk(cp, fn) else None


def negative_var(cp):
    def fn(parent, k, v, path):
        if isinstance(k, str) and isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v) \
                and ("var" in k or "m2" in k):
            v[0] = -1.0
            return True
        return False
    return cp if _walk(cp, fn) else None


def stringify_number(cp):
    def fn(parent, k, v, path):
        if isinstance(k, str) and isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v) \
                and "mean" in k:
            v[0] = "0.5"
            return True
        return False
    return cp if _walk(cp, fn) else None


if __name__ == "__main__":
    nsd.main()
