"""Benchmarks: this SDK next to the raw clients and the peer libraries, on real servers.

    python -m benchmarks                     # everything, about 10 minutes on 2 cores
    python -m benchmarks --quick             # a smoke run of about 2 minutes
    python -m benchmarks --backends etcd --sections uncontended,handover --repeat 5

Per backend (ZooKeeper, etcd 3.5, Consul, each started on free loopback ports unless one is
given with ``--zookeeper/--etcd/--consul HOST:PORT``): uncontended acquire + release,
hand-over with 8 and 64 waiting contenders and the wake-ups per release, crash failover of
a SIGKILLed holder process, watch latency, and the SDK at scale (1,000 contenders on one
election, 10,000 watched keys on one session). Next to the SDK, in the same run on the same
server: the same recipe hand-written on the raw client (aiozk, aetcd, py-consul), the peer
libraries that have the feature (aiozk's Lock, aetcd's Lock, kazoo's Lock and Election, Tooz
with its zookeeper and etcd3gw drivers), and one raw write as the physical floor. Rounds
are interleaved; the best round and the spread are reported.

Results: ``benchmarks/results/results.json``, ``results.md`` and ``latency.png``.
"""
