"""A raw origin on 127.0.0.1 for the proxy's tests: each path answers its own bytes (test bytes,
not a library), some of them hostile, and the origin counts its connections."""

from __future__ import annotations

import asyncio
import threading

BODY = b"0123456789" * 10

ANSWERS: dict[str, bytes] = {
    "/ka": b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Origin: yes\r\n\r\n%s" % (len(BODY), BODY),
    "/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5;ext=1\r\n01234\r\n5F\r\n" + BODY[5:] + b"\r\n0\r\nX-Trailer: dropped\r\n\r\n",
    "/te-and-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"64\r\n" + BODY + b"\r\n0\r\n\r\n",
    "/early-hints": b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "/conflicting-length": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "/obs-fold": b"HTTP/1.1 200 OK\r\nX-A: a\r\n folded\r\nContent-Length: 2\r\n\r\nok",
    "/bare-cr": b"HTTP/1.1 200 OK\r\nX-A: a\rSet-Cookie: x=1\r\nContent-Length: 2\r\n\r\nok",
    "/switching": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
    "/bad-status": b"HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nok",
    "/hop-by-hop": b"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n"
                   b"Content-Length: 2\r\n\r\nok",
}
CLOSE_AFTER = {"/to-the-close": b"HTTP/1.1 200 OK\r\n\r\n" + BODY,
               "/forgets-keep-alive": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"}


class RawOrigin:
    """An origin on 127.0.0.1 in a thread: the bytes of ANSWERS per path; counts its connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()
        server.close()
        tasks = asyncio.all_tasks(self.loop)  # connections the proxy keeps open: ended here
        for task in tasks:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, path = head.split(b" ")[:2]
                path_text = path.decode()
                answer = ANSWERS.get(path_text) or CLOSE_AFTER.get(path_text, b"HTTP/1.1 404 No\r\n\r\n")
                if method == b"HEAD":
                    answer = answer[:answer.index(b"\r\n\r\n") + 4]
                writer.write(answer)
                await writer.drain()
                if path_text in CLOSE_AFTER:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def __enter__(self) -> RawOrigin:
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
