"""Synthetic benchmark data: hotline lists in all three scopes and a realistic request stream.

Deterministic for a seed. Hosts are under .example / .test (reserved names); nothing
here resembles a real list. The request stream draws hosts from a Zipf distribution
(a few popular sites take most traffic), with varied paths and queries, and a given
fraction of requests for listed URLs.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

SCOPE_MIX = (("page", 0.85), ("folder", 0.10), ("domain", 0.05))


def listed_rows(n: int, seed: int = 1) -> Iterator[tuple[str, str]]:
    """n (url, scope) rows over about n/5 hosts."""
    rng = random.Random(seed)
    hosts = max(1, n // 5)
    for i in range(n):
        host = f"h{rng.randrange(hosts)}.listed.test"
        r = rng.random()
        if r < SCOPE_MIX[0][1]:
            query = f"?id={i}" if i % 7 == 0 else ""
            yield f"http://{host}/p{i % 53}/item-{i}.html{query}", "page"
        elif r < SCOPE_MIX[0][1] + SCOPE_MIX[1][1]:
            yield f"http://{host}/f{i}/", "folder"
        else:
            yield f"http://d{i}.{host}/", "domain"


def listed_variant(url: str, scope: str, rng: random.Random) -> str:
    """A request URL that a (url, scope) entry covers."""
    if scope == "page":
        return url
    if scope == "folder":
        return url + f"sub{rng.randrange(100)}/x.jpg"
    return url.replace("http://", "http://www.") + f"img/{rng.randrange(1000)}.png"


def request_stream(n: int, rows: list[tuple[str, str]], listed_fraction: float = 0.001,
                   seed: int = 2, popular_hosts: int = 20000) -> Iterator[str]:
    """n request URLs: Zipf-distributed unlisted hosts, and `listed_fraction` listed ones."""
    rng = random.Random(seed)
    # Zipf(s=1.1) over popular_hosts ranks via inverse-CDF table
    weights = [1.0 / (rank ** 1.1) for rank in range(1, popular_hosts + 1)]
    total = sum(weights)
    cdf, acc = [], 0.0
    for w in weights:
        acc += w / total
        cdf.append(acc)
    import bisect
    words = ["index", "news", "article", "img", "static", "assets", "search", "user", "video", "api"]
    for _ in range(n):
        if rows and rng.random() < listed_fraction:
            url, scope = rows[rng.randrange(len(rows))]
            yield listed_variant(url, scope, rng)
            continue
        rank = min(bisect.bisect_left(cdf, rng.random()), popular_hosts - 1)
        sub = rng.choice(("www.", "", "cdn.", "m."))
        depth = rng.randrange(0, 4)
        path = "/".join(rng.choice(words) + str(rng.randrange(50)) for _ in range(depth))
        query = f"?q={rng.randrange(10**6)}&page={rng.randrange(10)}" if rng.random() < 0.3 else ""
        ext = rng.choice((".html", ".js", ".css", ".png", "/", ""))
        yield f"http://{sub}site{rank}.example/{path}{ext}{query}"
