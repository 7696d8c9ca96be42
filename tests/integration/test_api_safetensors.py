"""test_api_safetensors.py - reports and statistics in safetensors form.

Reports written by nsd.st_write (this harness's own encoder, struct + json)
must give byte-identical results to the same reports in JSON;
/stats?format=safetensors is parsed by nsd.st_read (independent of the
daemon's code) and must carry the JSON answer's values exactly, loadable
into a torch module with load_state_dict(strict=False); hostile bodies get
400 and change nothing.
"""

import json
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nsd  # noqa: E402
from test_api_sync import LAYERS, SYNC_TIMEOUT_S, make_step, reports  # noqa: E402

ST = "application/safetensors"


def unbiased_report(rep):
    """The same statistics sent as unbiased variances (n/(n-1), float32)."""
    rep = json.loads(json.dumps(rep))
    rep["unbiased"] = True
    for lay in rep["layers"].values():
        n = lay["count"]
        if n > 1:
            lay["var"] = nsd.f32_list([v * n / (n - 1) for v in lay["var"]])
    return rep


def canonical_sync(r):
    """A /sync answer (JSON or safetensors) as {meta strings, layer -> (count,
    float32 mean, float32 var)}; None if it does not parse."""
    try:
        if r.content_type == ST:
            tensors, meta = nsd.st_read(r.body)
            layers = {}
            for name, (dtype, shape, arr) in tensors.items():
                layer, field = name.rsplit(".", 1)
                layers.setdefault(layer, {})[field] = (dtype, shape, arr.tolist())
            out = {}
            for layer, f in layers.items():
                if f["count"][:2] != ("I64", []) or f["mean"][0] != "F32" or f["var"][0] != "F32":
                    return None
                out[layer] = (f["count"][2], f["mean"][2], f["var"][2])
            return {k: meta.get(k) for k in ("step", "complete", "workers")}, out
        b = r.json()
        meta = {"step": str(b["step"]), "complete": "true" if b["complete"] else "false", "workers": str(b["workers"])}
        out = {layer: (v["count"], nsd.f32_list(v["mean"]), nsd.f32_list(v["var"])) for layer, v in b["layers"].items()}
        return meta, out
    except (ValueError, KeyError, TypeError, nsd.SafetensorsError):
        return None


def resnet50_bn():
    """BatchNorm layers of torchvision's ResNet-50: name -> channels."""
    out = {"bn1": 64}
    for i, (blocks, width) in enumerate(((3, 64), (4, 128), (6, 256), (3, 512)), start=1):
        for blk in range(blocks):
            p = f"layer{i}.{blk}"
            out[f"{p}.bn1"] = width
            out[f"{p}.bn2"] = width
            out[f"{p}.bn3"] = width * 4
            if blk == 0:
                out[f"{p}.downsample.1"] = width * 4
    return out


class Safetensors(nsd.Case):

    def twin_runs(self):
        a = nsd.run_name("stA")
        b = a.replace("stA", "stB")
        for run in (a, b):
            self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 3}).status == 201, f"create {run}")
        return a, b

    def same(self, ra, rb, a, b, desc):
        """Bodies equal once the run names (same length) are swapped."""
        ok = ra.status == 200 and rb.status == 200 and ra.body.replace(a.encode(), b.encode()) == rb.body
        return self.check(ok, desc, f"{ra.short(200)} vs {rb.short(200)}")

    def test_reports_in_safetensors_equal_json(self):
        rng = np.random.default_rng(41)
        a, b = self.twin_runs()
        for s in (1, 2, 3):
            data = make_step(rng, [15, 0, 23] if s != 2 else [4, 30, 1])
            reps = reports(s, data)
            reps[0]["domain"] = "photo"
            reps[2]["domain"] = "sketch"
            reps[1] = unbiased_report(reps[1])
            if s == 2:
                for r in reps:
                    r["update"] = ["precise"]
            if s < 3:
                for rep in reps:
                    self.check_status(self.c.report(a, rep), 202, f"{a} JSON step {s} worker {rep['worker']}")
                    body = nsd.report_to_safetensors(rep)
                    self.check_status(self.c.report(b, body, content_type=ST), 202,
                                      f"{b} safetensors step {s} worker {rep['worker']}")
            else:
                # /sync answers in the request's format unless Accept names one
                # (proto/openapi.yaml): run a, JSON reports, worker 1 accepts
                # safetensors; run b, safetensors reports, worker 0 accepts JSON
                reps[2]["scope"] = "domain"
                answers = {}
                for run, enc, accept in ((a, None, {1: ST}), (b, ST, {0: "application/json"})):
                    clients = [self.client(timeout=SYNC_TIMEOUT_S) for _ in reps]
                    bodies = [nsd.report_to_safetensors(r) if enc else r for r in reps]
                    fns = [lambda c=c, x=x, w=w: c.report(run, x, sync=True, content_type=enc,
                                                          headers={"Accept": accept[w]} if w in accept else None)
                           for w, (c, x) in enumerate(zip(clients, bodies))]
                    res, errs = nsd.parallel(fns, limit=SYNC_TIMEOUT_S + 5)
                    self.require(all(e is None for e in errs), f"/sync step 3 on {run} answered", f"{errs}")
                    answers[run] = res
                for w, fmt in enumerate(("json", ST, "json/" + ST)):
                    x, y = answers[a][w], answers[b][w]
                    exp_a = ST if w == 1 else "application/json"
                    exp_b = "application/json" if w == 0 else ST
                    self.check(x.status == 200 and y.status == 200 and x.content_type == exp_a
                               and y.content_type == exp_b,
                               f"/sync worker {w}: answered as {exp_a} (JSON report) / {exp_b} (safetensors report)",
                               f"{x.status} {x.content_type} / {y.status} {y.content_type}")
                    if exp_a == exp_b:
                        self.check(x.body == y.body, f"/sync worker {w}: identical {exp_a} answers to JSON and "
                                   "safetensors reports", f"{x.short(200)} vs {y.short(200)}")
                    cx, cy = canonical_sync(x), canonical_sync(y)
                    self.check(cx is not None and cx == cy, f"/sync worker {w}: same statistics in both formats",
                               f"{cx} vs {cy}")
        for q in ({"source": "ema"}, {"source": "precise"}, {"source": "last"}, {"source": "ema", "domain": "photo"},
                  {"source": "precise", "domain": "sketch"}, {"source": "ema", "domain": "default"},
                  {"source": "precise", "variance": "biased"}, {"source": "ema", "mixture": "photo:0.5,sketch:0.5"},
                  {"source": "ema", "format": "safetensors"}):
            self.same(self.c.stats(a, **q), self.c.stats(b, **q), a, b,
                      f"stats {q}: safetensors reports give the same bytes as JSON reports")

    def test_stats_format_safetensors(self):
        rng = np.random.default_rng(42)
        run = nsd.run_name("stfmt")
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 1}).status == 201, "create")
        for s in (1, 2, 3):
            rep = reports(s, make_step(rng, [int(rng.integers(3, 40))]))[0]
            self.check_status(self.c.report(run, nsd.report_to_safetensors(rep), content_type=ST), 202,
                              f"safetensors report step {s}")
        for q in ({"source": "ema"}, {"source": "precise"}, {"source": "precise", "variance": "biased"},
                  {"source": "last"}, {"source": "ema", "layers": "layer1.0.bn1"}):
            js = self.c.stats(run, **q)
            st = self.c.stats(run, format="safetensors", **q)
            self.check_status(st, 200, f"GET stats {q} format=safetensors")
            self.check_eq(st.content_type, ST, f"{q}: Content-Type {ST}")
            try:
                tensors, meta = nsd.st_read(st.body)
            except nsd.SafetensorsError as e:
                self.check(False, f"{q}: the body is a valid safetensors file", str(e))
                continue
            self.check(True, f"{q}: the body is a valid safetensors file ({len(tensors)} tensors)")
            jb = js.json()
            self.check(meta.get("run") == run and meta.get("source") == q["source"],
                       f"{q}: __metadata__ names run and source (strings)", f"{meta}")
            expect_names = set()
            for layer, vals in jb["layers"].items():
                arrays = ("mean", "var") if q["source"] == "last" else ("running_mean", "running_var")
                for arr in arrays:
                    name = f"{layer}.{arr}"
                    expect_names.add(name)
                    t = tensors.get(name)
                    ok = (t is not None and t[0] == "F32" and t[1] == [LAYERS[layer]]
                          and np.array_equal(t[2], np.asarray(vals[arr], dtype=np.float32)))
                    self.check(ok, f"{q}: {name} F32 [{LAYERS[layer]}] equals the JSON values bit for bit",
                               f"{t}")
                # doc/design.md: only what a BatchNorm's state_dict holds (num_batches_tracked),
                # plus count for source=last; the JSON-only scalars (step, num_batches,
                # num_samples) stay out of the file
                for key, v in vals.items():
                    if key in ("num_batches_tracked", "count"):
                        name = f"{layer}.{key}"
                        expect_names.add(name)
                        t = tensors.get(name)
                        self.check(t is not None and t[0] == "I64" and t[1] == [] and int(t[2]) == v,
                                   f"{q}: {name} I64 [] = {v}", f"{t}")
                if q["source"] == "ema":
                    self.check(f"{layer}.num_batches_tracked" in tensors, f"{q}: {layer}.num_batches_tracked present")
            self.check_eq(sorted(tensors), sorted(expect_names), f"{q}: exactly the JSON answer's tensors")
            if q == {"source": "ema"}:
                self.torch_load(tensors, jb)

    def torch_load(self, tensors, jb):
        try:
            import torch
        except Exception:
            print("note torch not importable: load_state_dict check skipped")
            return
        root = torch.nn.Module()
        for layer, c in LAYERS.items():
            parent = root
            parts = layer.split(".")
            for p in parts[:-1]:
                if not hasattr(parent, p):
                    parent.add_module(p, torch.nn.Module())
                parent = getattr(parent, p)
            parent.add_module(parts[-1], torch.nn.BatchNorm2d(c))
        sd = {k: torch.from_numpy(np.array(v[2])) for k, v in tensors.items()}
        res = root.load_state_dict(sd, strict=False)
        for layer in LAYERS:
            bn = root.get_submodule(layer)
            ok = (bn.running_mean.tolist() == [float(np.float32(x)) for x in jb["layers"][layer]["running_mean"]]
                  and int(bn.num_batches_tracked) == jb["layers"][layer]["num_batches_tracked"])
            self.check(ok, f"torch load_state_dict(strict=False) loads {layer}")
        self.check(not res.missing_keys or all(k.endswith(("weight", "bias")) for k in res.missing_keys),
                   "load_state_dict misses only weight/bias", f"{res.missing_keys}")
        self.check(not res.unexpected_keys, "load_state_dict finds no key a BatchNorm does not have",
                   f"{res.unexpected_keys}")

    def test_resnet50_shaped_report(self):
        """53 BN layers, 26,560 channels: JSON and safetensors reports of the
        same statistics give identical statistics, equal to the reference."""
        rng = np.random.default_rng(43)
        layers = resnet50_bn()
        self.check_eq((len(layers), sum(layers.values())), (53, 26560), "(self-check) ResNet-50 BN shapes")
        a, b = self.twin_runs()
        for run in (a, b):
            self.check_status(self.c.put(f"/v1/runs/{run}", {"world_size": 1}), 200, f"{run}: world_size 1")
        emas = {l: nsd.Ema(c) for l, c in layers.items()}
        for s in (1, 2):
            rep = {"step": s, "worker": 0, "layers": {}}
            for l, c in layers.items():
                mean = nsd.f32_list(rng.normal(0, 1, c))
                var = nsd.f32_list(rng.uniform(0.1, 4, c))
                rep["layers"][l] = {"count": 1024, "mean": mean, "var": var}
                emas[l].apply(1024, mean, var)
            body = nsd.report_to_safetensors(rep)
            self.check_status(self.c.report(a, rep, timeout=30), 202, f"step {s}: {len(json.dumps(rep))}-byte JSON report")
            self.check_status(self.c.report(b, body, content_type=ST, timeout=30), 202,
                              f"step {s}: {len(body)}-byte safetensors report")
        ra, rb = self.c.stats(a, timeout=30), self.c.stats(b, timeout=30)
        self.same(ra, rb, a, b, "ResNet-50: identical statistics from both encodings")
        got = ra.json()["layers"] if ra.status == 200 else {}
        worst = max((max(nsd.max_err(got.get(l, {}).get("running_mean", []), e.mean),
                         nsd.max_err(got.get(l, {}).get("running_var", []), e.var)) for l, e in emas.items()),
                    default=float("inf"))
        self.check(worst <= 1 and len(got) == 53, f"ResNet-50: every layer's EMA equals the formula (max err {worst:.3g} of tol)")
        st = self.c.stats(a, format="safetensors", timeout=30)
        try:
            tensors, _ = nsd.st_read(st.body)
            ok = all(np.array_equal(tensors[f"{l}.running_var"][2], np.asarray(got[l]["running_var"], np.float32))
                     for l in layers)
        except (nsd.SafetensorsError, KeyError) as e:
            ok = False
            print(f"note {e}")
        self.check(ok, "ResNet-50: safetensors statistics carry the JSON values")

    def test_hostile_bodies(self):
        run = nsd.run_name("hostile")
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 1}).status == 201, "create")
        rep = {"step": 1, "worker": 0, "layers": {"l1": {"count": 4, "mean": [0.5, 1.5], "var": [1.0, 2.0]}}}
        self.check_status(self.c.report(run, nsd.report_to_safetensors(rep), content_type=ST), 202,
                          "a valid safetensors report (step 1)")
        rep["step"] = 2
        good = nsd.report_to_safetensors(rep)
        hlen = struct.unpack_from("<Q", good)[0]
        header = json.loads(good[8:8 + hlen])
        data = good[8 + hlen:]

        def build(hdr, payload=data, hl=None):
            hb = json.dumps(hdr).encode()
            return struct.pack("<Q", len(hb) if hl is None else hl) + hb + payload

        def edit(fn):
            h = json.loads(json.dumps(header))
            fn(h)
            return build(h)

        def set_(path, value):
            def f(h):
                cur = h
                for k in path[:-1]:
                    cur = cur[k]
                if value is None:
                    del cur[path[-1]]
                else:
                    cur[path[-1]] = value
            return f

        cases = [
            (good[:-3], "truncated data area"),
            (good[:20], "truncated header"),
            (good[:8], "header length only"),
            (b"\x05\x00", "shorter than the length field"),
            (b"", "empty body"),
            (struct.pack("<Q", 2 ** 62) + good[8:], "header length 2^62"),
            (struct.pack("<Q", 2 ** 64 - 1) + good[8:], "header length 2^64-1"),
            (struct.pack("<Q", len(good)) + good[8:], "header length past the end"),
            (struct.pack("<Q", 0) + good[8:], "header length 0"),
            (struct.pack("<Q", 8) + b"not json" + data, "header not JSON"),
            (build([1, 2, 3]), "header a JSON array"),
            (struct.pack("<Q", 4) + b"\xff\xfe{}" + data, "header not UTF-8"),
            (edit(set_(["l1.var", "data_offsets"], header["l1.mean"]["data_offsets"])), "overlapping offsets"),
            (edit(set_(["l1.mean", "data_offsets"], [0, 4096])), "offsets past the data"),
            (edit(set_(["l1.mean", "data_offsets"], [8, 0])), "reversed offsets"),
            (edit(set_(["l1.mean", "shape"], [3])), "shape [3] for 2 floats"),
            (edit(set_(["l1.mean", "shape"], [2 ** 62, 4])), "shape product overflow"),
            (edit(set_(["l1.mean", "shape"], [1, 2])), "mean of rank 2"),
            (edit(set_(["l1.count", "dtype"], "F64")), "count as F64"),
            (edit(set_(["l1.mean", "dtype"], "I32")), "mean as I32"),
            (edit(set_(["l1.mean", "dtype"], "X9")), "unknown dtype"),
            (edit(set_(["__metadata__", "step"], None)), "no step in __metadata__"),
            (edit(set_(["__metadata__", "step"], "two")), "step 'two'"),
            (edit(set_(["__metadata__", "step"], 2)), "metadata value not a string"),
            (edit(set_(["__metadata__", "worker"], "-1")), "worker -1"),
            (edit(set_(["__metadata__", "update"], "ema,bogus")), "update with an unknown part"),
            (edit(set_(["__metadata__"], "x")), "__metadata__ not an object"),
        ]
        with_extra = json.loads(json.dumps(header))
        with_extra["l1.foo"] = {"dtype": "F32", "shape": [1], "data_offsets": [len(data), len(data) + 4]}
        cases.append((build(with_extra, data + b"\0\0\0\0"), "an unknown tensor l1.foo"))
        meta = header["__metadata__"]
        full = {"l1.count": ("I64", [], [4]), "l1.mean": ("F32", [2], [0.5, 1.5]), "l1.var": ("F32", [2], [1.0, 2.0])}
        for drop in ("l1.count", "l1.var", "l1.mean"):
            part = {k: v for k, v in full.items() if k != drop}
            cases.append((nsd.st_write(part, meta), f"a well-formed file without {drop}"))
        cases.append((nsd.st_write(dict(full, **{"l1.count": ("I64", [], [-4])}), meta), "count -4"))
        cases.append((nsd.st_write(dict(full, **{"bad name.count": ("I64", [], [0])}), meta), "a bad layer name"))
        cases.append((nsd.st_write(dict(full, **{"l1.mean": ("F32", [3], [0.5, 1.5, 2.5])}), meta),
                      "mean and var lengths differ"))
        wrongly_accepted = 0
        for body, what in cases:
            before = self.snapshot(run)
            r = self.c.report(run, body, content_type=ST)
            self.check_status(r, 400, f"safetensors with {what}", code="bad_request")
            wrongly_accepted += r.status == 202
            self.check_unchanged(before, run, what)
            self.check_status(self.c.get("/livez"), 200, f"still serving after {what}")
        if wrongly_accepted == 0:
            self.check_status(self.c.report(run, good, content_type=ST), 202, "the intact step-2 body is then accepted")
            b = self.c.stats(run).json()["layers"]["l1"]
            self.check_eq(b["num_batches_tracked"], 2, "both valid steps applied, nothing else")
        # F64 arrays and a count of shape [1] are accepted (proto/openapi.yaml ReportSafetensors)
        r3 = {"step": 3, "worker": 0, "layers": {"l1": {"count": 4, "mean": [0.5, 1.5], "var": [1.0, 2.0]}}}
        f64 = nsd.st_write({"l1.count": ("I64", [1], [4]), "l1.mean": ("F64", [2], [0.5, 1.5]),
                            "l1.var": ("F64", [2], [1.0, 2.0])}, {"step": "3", "worker": "0"})
        self.check_status(self.c.report(run, f64, content_type=ST), 202, "F64 mean/var and count [1] accepted")
        if wrongly_accepted == 0:
            ema = self.c.stats(run).json()["layers"]["l1"]
            ref = nsd.Ema(2)
            for _ in range(3):  # steps 1, 2 and 3 carried the same statistics
                ref.apply(4, r3["layers"]["l1"]["mean"], r3["layers"]["l1"]["var"])
            self.check_close(ema["running_mean"], ref.mean, "F64 report applied like F32 (same values)")
            self.check_close(ema["running_var"], ref.var, "F64 report: running_var")


if __name__ == "__main__":
    nsd.main()
