"""Explorations and sweeps beyond one process: a sharded explorer, and the Ray engine.

**Sharded exploration** (``sharded_explore``).  The visited set is split by a stable hash of the
state key over K shards; each shard owns its keys and holds their nodes.  Breadth-first and
level-synchronous, like ``explore.explore``, over the same ``Model`` (init / actions / next / key /
node) and the same counting (``accumulate``) and summary (``summary_facts`` -> ``merge_facts`` ->
``summary_from_facts``):

1. *expand*: every shard expands its frontier; each child goes to the shard owning its key.  Edges
   into one key are combined on the sending side: the least trace with the state it reaches, and the
   sums of the parents' counts (``accumulate`` is linear in the parent, so summing first is exact).
2. *merge*: every shard takes the batches addressed to it; per key the least trace among all
   senders wins, so the node keeps the same state and trace the in-process explorer keeps.
3. *commit*: the node is built from the winning state (``Model.node``: hazards, domains), the summed
   parents are accumulated into it, and it joins the next frontier.  With ``max_states``, the states
   admitted at a level are the ones with the least traces -- exactly those the in-process explorer
   (which meets new states in trace order) admits.
4. A level, once expanded, is folded into the shard's summary facts and dropped: every event happens
   once, so a key names its depth and no later level can meet an earlier level's state.  A shard holds
   two levels at most.

The result equals ``explore.explore`` on the same scenario: states, orders, domain counts, verdicts,
hazard counts and traces (tests/test_distributed.py checks it field by field).

**Hash compaction** (``fingerprint_bits``): a shard keys its states by a b-bit fingerprint of the
canonical key (BLAKE2b of its repr) instead of the key itself -- a few dozen bytes per state instead of
the key's kilobytes.  Two distinct states with one fingerprint are taken for one (the second is
omitted with everything only it leads to).  Over n states the probability that any omission happened
is at most n(n-1)/2^(b+1) (birthday bound); the result reports it.  64 bits: below 3e-8 for a million
states, below 3e-4 for 10^8.

**Ray** (optional: ``pip install 'pyiommufd[ray]'``).  ``ray_explore`` runs the shards as Ray actors
(batches move actor to actor through Ray's object store; the driver sees only counts);
``RayEngine`` runs a sweep's explorations as Ray tasks.  Either starts a local Ray for the run
(``num_cpus`` = workers, no dashboard) or joins an existing cluster (``address``); inside a process
that already called ``ray.init`` (tests) it uses that.
"""
from __future__ import annotations

import contextlib
import hashlib
import heapq
import os
import sys
import time
from pathlib import Path

from .errors import EnvironmentMissing
from .explore import Model, Node, accumulate, merge_facts, root_node, summary_facts, summary_from_facts
from .hazards import KINDS
from .runner import _dumps, _loads

RAY_HINT = ("the Ray engine needs Ray, an optional extra: pip install 'pyiommufd[ray]' (or pip install 'ray>=2'); "
            "without it use --engine process")


LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"   # "0": a single-node Ray on 127.0.0.1 (ray_constants)


def require_ray(local: bool = False):
    """Import Ray or raise EnvironmentMissing (CLI exit 3) saying how to get it.  ``local``: the run will start
    its own single-node Ray, so keep all of Ray's sockets on the loopback address (Ray otherwise listens on,
    and talks to itself through, the machine's network address); read by Ray when it is first imported."""
    if local and "ray" not in sys.modules:
        os.environ.setdefault(LOOPBACK_ONLY, "0")
    try:
        import ray
    except ImportError:
        raise EnvironmentMissing(RAY_HINT) from None
    return ray


# -- states across processes ----------------------------------------------------------------------
def shared_objects(vmm) -> list:
    """The parts of a state no op changes, passed by reference (as ``Vmm.clone`` does): a state packed in
    one shard is unpacked against the receiving shard's own copies, built from the same scenario."""
    return vmm._shared_parts()


# the Vmm's own serializer (shared parts by reference), across shards as within one process
pack, unpack = _dumps, _loads


# -- keys ------------------------------------------------------------------------------------------
def digest(key) -> bytes:
    """A stable digest of a canonical key (the same in every process: Python's hash() is salted)."""
    return hashlib.blake2b(repr(key).encode(), digest_size=32).digest()


def omission_bound(states: int, bits: int) -> float:
    """Upper bound on the probability that hash compaction omitted a state: n(n-1)/2^(b+1)."""
    return min(1.0, states * (states - 1) / 2 ** (bits + 1))


class _Parent:
    """The summed counts of the edges into one key: what ``accumulate`` reads from a parent."""
    __slots__ = ("clean", "seen", "ways")

    def __init__(self, ways, clean, seen):
        self.ways, self.clean, self.seen = ways, clean, dict(zip(KINDS, seen))


class Shard:
    """Owns the keys whose digest falls on ``index`` (mod ``count``); holds their nodes, two levels at most.
    Used as a plain object (engine "process") or as a Ray actor."""

    def __init__(self, index: int, count: int, sc, profile: str, strategy: str = "kernel-auto",
                 symmetry: bool = True, fingerprint_bits: int | None = None):
        self.index, self.count, self.bits = index, count, fingerprint_bits
        self.model = Model(sc, profile, strategy, symmetry)
        self.E = len(self.model.events)
        key, root = root_node(self.model)
        self.shared = shared_objects(root.vmm)
        self.level: dict = {}
        self.pending: dict = {}
        self.facts = summary_facts(self.model, [], [])
        self.stats = {"expanded": 0, "edges": 0, "sent": 0, "sent_bytes": 0, "seconds": 0.0}
        skey, owner = self.place(key)
        if owner == index:
            self.level[skey] = root

    def place(self, key) -> tuple:
        """(the key this shard stores, the shard that owns it)."""
        d = digest(key)
        if self.bits:
            fp = int.from_bytes(d, "big") >> (256 - self.bits)
            return fp, fp % self.count
        return key, int.from_bytes(d[:8], "big") % self.count

    def size(self) -> int:
        return len(self.level)

    def expand(self):
        """Fold the frontier into the facts, expand it; children for this shard go to its pending table,
        the others into one batch per owner.  Returns the batches (None at this shard's own index)."""
        t0 = time.perf_counter()
        m = self.model
        level, self.level = self.level, {}
        self.facts = merge_facts(self.facts, summary_facts(
            m, level.values(), [n for n in level.values() if len(n.done) == self.E]))
        out: dict = {}
        for _, node in sorted(level.items(), key=lambda kv: kv[1].trace):
            for ei in m.actions(node.done):
                child = m.next(node.vmm, ei)
                done = node.done | {ei}
                ckey = self.place(m.key(child, done))
                trace = node.trace + (ei,)
                e = out.get(ckey)
                self.stats["edges"] += 1
                if e is None:
                    out[ckey] = [trace, child, node.ways, node.clean, [node.seen[k] for k in KINDS]]
                    continue
                if trace < e[0]:
                    e[0], e[1] = trace, child
                e[2] += node.ways
                e[3] += node.clean
                for i, k in enumerate(KINDS):
                    e[4][i] += node.seen[k]
            node.vmm = None
            self.stats["expanded"] += 1
        batches: list = [None if j == self.index else [] for j in range(self.count)]
        for (skey, owner), (trace, child, ways, clean, seen) in out.items():
            if owner == self.index:
                self._take(skey, trace, child, ways, clean, seen)
            else:
                blob = pack(child, self.shared)
                self.stats["sent"] += 1
                self.stats["sent_bytes"] += len(blob)
                batches[owner].append((skey, trace, ways, clean, tuple(seen), blob))
        self.stats["seconds"] += time.perf_counter() - t0
        return batches

    def _take(self, skey, trace, payload, ways, clean, seen) -> None:
        e = self.pending.get(skey)
        if e is None:
            self.pending[skey] = [trace, payload, ways, clean, list(seen)]
            return
        if trace < e[0]:
            e[0], e[1] = trace, payload
        e[2] += ways
        e[3] += clean
        for i in range(len(KINDS)):
            e[4][i] += seen[i]

    def merge(self, *batches) -> int:
        """Take the batches addressed to this shard; the number of new states waiting to be admitted."""
        t0 = time.perf_counter()
        for batch in batches:
            for skey, trace, ways, clean, seen, blob in batch or ():
                self._take(skey, trace, blob, ways, clean, seen)
        self.stats["seconds"] += time.perf_counter() - t0
        return len(self.pending)

    def least_traces(self, n: int) -> list:
        """The n least traces among the waiting states (the driver's cut under max_states)."""
        return heapq.nsmallest(n, (e[0] for e in self.pending.values()))

    def commit(self, limit=None) -> int:
        """Admit the waiting states whose trace is at most ``limit`` (None: all) as the next frontier."""
        t0 = time.perf_counter()
        m = self.model
        for skey, (trace, payload, ways, clean, seen) in self.pending.items():
            if limit is not None and trace > limit:
                continue
            vmm = unpack(payload, self.shared) if isinstance(payload, bytes) else payload
            node: Node = m.node(vmm, frozenset(trace), trace)
            accumulate(node, _Parent(ways, clean, seen))
            self.level[skey] = node
        self.pending = {}
        self.stats["seconds"] += time.perf_counter() - t0
        return len(self.level)

    def result(self) -> tuple[dict, dict]:
        return self.facts, self.stats


# -- the level-synchronous driver, one backend per engine ---------------------------------------------
class LocalShards:
    """K shards as objects in this process (the packing and routing run as they do across machines)."""

    def __init__(self, count, *args):
        self.shards = [Shard(i, count, *args) for i in range(count)]

    def expand_merge(self) -> list[int]:
        outs = [s.expand() for s in self.shards]
        return [s.merge(*[outs[i][j] for i in range(len(outs)) if i != j]) for j, s in enumerate(self.shards)]

    def least_traces(self, n):
        return [s.least_traces(n) for s in self.shards]

    def commit(self, limit):
        return [s.commit(limit) for s in self.shards]

    def results(self):
        return [s.result() for s in self.shards]


class _ShardHost:
    """A Ray actor holding one Shard at a time, so one set of actors serves explorations one after another
    (starting an actor's worker process costs seconds; a shard's state does not outlive its exploration)."""

    def setup(self, *args) -> int:
        self.shard = Shard(*args)
        return self.shard.size()

    def expand(self):
        return self.shard.expand()

    def merge(self, *batches):
        return self.shard.merge(*batches)

    def least_traces(self, n):
        return self.shard.least_traces(n)

    def commit(self, limit):
        return self.shard.commit(limit)

    def result(self):
        res, self.shard = self.shard.result(), None
        return res


_POOL: list = []     # idle _ShardHost actors of the current Ray session (each holds one CPU)
_POOL_SESSION: list = [None]


def _session_id(ray):
    ctx = ray.get_runtime_context()
    return ctx.gcs_address, ctx.get_node_id()


def release_actors(ray) -> None:
    """Stop the pooled shard actors (their CPUs go back to tasks, e.g. a sweep's)."""
    for a in _POOL:
        with contextlib.suppress(Exception):
            ray.kill(a)
    _POOL.clear()


class RayShards:
    """K shards on Ray actors; batches go actor to actor through the object store."""

    def __init__(self, ray, count, *args):
        self.ray = ray
        if _POOL_SESSION[0] != _session_id(ray):     # actors of an earlier Ray session are gone
            _POOL.clear()
            _POOL_SESSION[0] = _session_id(ray)
        cls = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(_ShardHost)
        while len(_POOL) < count:
            _POOL.append(cls.remote())
        self.actors = _POOL[:count]
        ray.get([a.setup.remote(i, count, *args) for i, a in enumerate(self.actors)])

    def expand_merge(self) -> list[int]:
        k = len(self.actors)
        if k == 1:
            a = self.actors[0]
            a.expand.remote()
            return self.ray.get([a.merge.remote()])
        outs = [a.expand.options(num_returns=k).remote() for a in self.actors]
        return self.ray.get([a.merge.remote(*[outs[i][j] for i in range(k) if i != j])
                             for j, a in enumerate(self.actors)])

    def least_traces(self, n):
        return self.ray.get([a.least_traces.remote(n) for a in self.actors])

    def commit(self, limit):
        return self.ray.get([a.commit.remote(limit) for a in self.actors])

    def results(self):
        return self.ray.get([a.result.remote() for a in self.actors])


def sharded_explore(sc, profile: str | None = None, strategy: str = "kernel-auto", *, symmetry: bool = True,
                    max_states: int | None = None, progress=None, shards: int = 1,
                    fingerprint_bits: int | None = None, backend=None) -> dict:
    """Explore like ``explore.explore`` with the visited set split over ``shards`` key shards
    (``backend``: None for shards in this process, or a callable (count, *shard_args) -> backend)."""
    t0 = time.perf_counter()
    model = Model(sc, profile, strategy, symmetry)     # validates, and renders the summary
    if fingerprint_bits is not None and not 1 <= fingerprint_bits <= 256:
        raise ValueError("--fingerprint-bits must be between 1 and 256")
    args = (sc, model.profile, strategy, symmetry, fingerprint_bits)
    be = backend(shards, *args) if backend else LocalShards(shards, *args)
    total, depth, truncated = 1, 0, False
    while True:
        new = sum(be.expand_merge())
        if not new:
            break
        limit = None
        if max_states is not None and total + new > max_states:
            truncated = True
            room = max(0, max_states - total)
            limit = () if room == 0 else sorted(t for ts in be.least_traces(room) for t in ts)[room - 1]
        total += sum(be.commit(limit))
        depth += 1
        if progress:
            progress(depth, len(model.events), total)
    results = be.results()
    facts = results[0][0]
    for f, _ in results[1:]:
        facts = merge_facts(facts, f)
    res = summary_from_facts(model, facts, truncated, time.perf_counter() - t0)
    stats = [s for _, s in results]
    res["engine"] = {"name": "process", "shards": shards, "expanded_per_shard": [s["expanded"] for s in stats],
                     "states_sent_between_shards": sum(s["sent"] for s in stats),
                     "bytes_sent_between_shards": sum(s["sent_bytes"] for s in stats)}
    if fingerprint_bits:
        res["fingerprint"] = {"bits": fingerprint_bits,
                              "omission_probability_bound": omission_bound(res["states"], fingerprint_bits),
                              "note": "hash compaction: P(some state omitted) <= n(n-1)/2^(bits+1)"}
    return res


# -- Ray sessions -------------------------------------------------------------------------------------
@contextlib.contextmanager
def ray_session(workers: int | None = None, address: str | None = None):
    """Ray for one run: the caller's session if ``ray.init`` was already called, else an existing cluster
    (``address``) or a local Ray with ``workers`` CPUs (default: this machine's), shut down afterwards."""
    ray = require_ray(local=not address)
    info = {"ray": ray.__version__}
    if ray.is_initialized():
        info.update(started=False, startup_seconds=0.0)
        info["workers"] = int(ray.cluster_resources().get("CPU", 0))
        yield ray, info
        return
    pkg = Path(__file__).resolve().parent
    t0 = time.perf_counter()
    try:
        if address:
            # a cluster's nodes get this package with the job (its dependencies must be installed there)
            ray.init(address=address, runtime_env={"py_modules": [str(pkg)]}, log_to_driver=False,
                     logging_level="WARNING")
        else:
            path = os.pathsep.join(p for p in (str(pkg.parent), os.environ.get("PYTHONPATH")) if p)
            ray.init(num_cpus=workers or os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                     logging_level="WARNING", runtime_env={"env_vars": {"PYTHONPATH": path}})
    except ConnectionError as e:
        raise EnvironmentMissing(f"cannot reach the Ray cluster at {address}: {e}") from None
    info.update(started=True, startup_seconds=round(time.perf_counter() - t0, 2),
                workers=int(ray.cluster_resources().get("CPU", 0)), address=address or "local")
    try:
        yield ray, info
    finally:
        _POOL.clear()
        ray.shutdown()


def ray_explore(sc, profile: str | None = None, strategy: str = "kernel-auto", *, workers: int | None = None,
                address: str | None = None, shards: int | None = None, **kw) -> dict:
    """``sharded_explore`` with its shards as Ray actors (one per worker CPU unless ``shards`` says)."""
    with ray_session(workers, address) as (ray, info):
        k = shards or max(1, workers or info["workers"])
        if k > info["workers"]:
            raise EnvironmentMissing(f"the Ray cluster has {info['workers']} CPUs; {k} key shards need one each "
                                     "(give fewer with --workers)")
        res = sharded_explore(sc, profile, strategy, shards=k,
                              backend=lambda count, *args: RayShards(ray, count, *args), **kw)
        res["engine"].update(name="ray", **info)
        return res


class RayEngine:
    """A sweep's explorations as Ray tasks (sweep.run_sweep's ``engine``): a local Ray with ``workers`` CPUs
    started for the run, or the cluster at ``address``.  The sweep hands over its task function, so this
    module does not import sweep.py, nor sweep.py this one: cli.py picks the engine."""
    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None):
        self.address = address
        self._workers = workers

    @property
    def workers(self) -> int:
        """What the size estimate divides by: the CPUs asked for (a cluster's are known once joined)."""
        return self._workers or os.cpu_count() or 1

    def run(self, fn, tasks: list, done) -> dict:
        """``done(fn(task))`` for every task, as each finishes; what the sweep JSON says about the engine."""
        with ray_session(self._workers, self.address) as (ray, info):
            release_actors(ray)
            remote = ray.remote(num_cpus=1)(fn)
            pending = [remote.remote(t) for t in tasks]
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for r in ray.get(ready):
                    done(r)
            return info
