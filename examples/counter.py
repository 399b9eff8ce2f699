"""A small program to checkpoint: it counts, and says so in a log file, forever.

Its state lives in memory (the counter, a running hash of every value, the
time it started), so after a restore the log shows whether it really went
on where it stopped: the count continues and the hash chain stays valid.
"""

import hashlib
import os
import sys
import threading
import time


def main() -> None:
    log = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115 - open for the program's whole life
    state = {"count": 0, "digest": hashlib.sha256(b"start").hexdigest()}
    started = time.time()

    def count() -> None:
        while True:
            state["count"] += 1
            value = f"{state['digest']}{state['count']}".encode()
            state["digest"] = hashlib.sha256(value).hexdigest()
            time.sleep(0.01)

    threading.Thread(target=count, daemon=True, name="counter").start()
    while True:
        time.sleep(0.5)
        log.write(
            f"pid {os.getpid()} count {state['count']} digest {state['digest'][:12]} "
            f"running for {time.time() - started:.1f}s\n"
        )


if __name__ == "__main__":
    main()
