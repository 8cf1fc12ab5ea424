"""Checks on a serving Session shared between threads."""

from __future__ import annotations

def assert_same_output_under_threads(session, images: list, tile: int = 16, rounds: int = 3) -> None:
    """One Session shared by one thread per image, started together, ``rounds`` runs each: every run equals the
    image's single-threaded output (tiles of concurrent requests never mix)."""
    import threading

    import numpy as np

    expected = [session.run(img, tile=tile) for img in images]
    results, failures, barrier = {}, [], threading.Barrier(len(images))

    def work(i):
        barrier.wait()
        try:
            for _ in range(rounds):
                results[i] = session.run(images[i], tile=tile)
                if not np.array_equal(results[i], expected[i]):
                    failures.append(i)
        except BaseException as exc:  # noqa: BLE001 - a thread's error fails the test, not just a warning
            failures.append((i, exc))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    assert all(np.array_equal(results[i], expected[i]) for i in range(len(images)))
