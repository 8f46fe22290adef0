"""An SMTP sink in its own process (aiosmtpd): accepts every message, keeps none, counts them.

    python -m bench.sink PORT COUNT_FILE

The count is written to COUNT_FILE every 50 ms, so the bench can wait for the last email of a run
without sharing a process (and the GIL) with the code it measures.
"""

import os
import sys
import threading

from aiosmtpd.controller import Controller


class Counting:
    def __init__(self):
        self.received = 0

    async def handle_DATA(self, server, session, envelope):
        self.received += 1
        return "250 Message accepted for delivery"


def main():
    port, count_file = int(sys.argv[1]), sys.argv[2]
    handler = Counting()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    stop = threading.Event()
    try:
        while not stop.wait(0.05):
            with open(count_file + ".tmp", "w") as out:
                out.write(str(handler.received))
            os.replace(count_file + ".tmp", count_file)
    except KeyboardInterrupt:
        pass
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
