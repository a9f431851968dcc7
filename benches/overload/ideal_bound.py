#!/usr/bin/env python3
"""The most any proxy can serve of the overload bench's critical requests at 10x.

`cargo bench --bench overload` offers 4000 req/s (10x an upstream of 8 workers x 20 ms), request
i due at i/4000 s, critical with probability 0.1: the critical requests alone are the upstream's
whole capacity. This computes what an ideal proxy would serve of them: no cost of its own (or a
fixed `hop` per request), low-priority work never in their way, first come first served, and a
request admitted only if it will start within `wait` (every admitted request then takes at most
wait + 20 ms; the issue's "admitted p99 <= 3 service times" allows a wait of 40 ms, the SLO of
100 ms one of 80 ms). Service times are exact, so the start time of each request is known when
it arrives. Run: python3 benches/overload/ideal_bound.py
"""
import heapq
import random


def served_share(seed, wait, hop=0.0, seconds=8.0, rate=4000, share=0.1, workers=8, service=0.020):
    rng = random.Random(seed)
    free = [0.0] * workers  # when each worker is next free, a heap
    due = served = 0
    for i in range(int(seconds * rate)):
        if rng.random() >= share:
            continue
        t = i / rate
        due += 1
        start = max(t, free[0])
        if start - t > wait:
            continue  # turned away at once: it would wait too long
        heapq.heapreplace(free, start + service + hop)
        served += 1
    return served / due


if __name__ == "__main__":
    seeds = range(20)
    for wait in (0.040, 0.080):
        for hop in (0.0, 0.0005):
            r = [served_share(s, wait, hop) for s in seeds]
            print(
                f"wait <= {wait * 1000:.0f} ms, hop {hop * 1000:.1f} ms: critical served "
                f"{100 * min(r):.1f}% (worst) / {100 * sum(r) / len(r):.1f}% (mean) / "
                f"{100 * max(r):.1f}% (best) over {len(r)} seeds of 8 s"
            )
