#!/usr/bin/env python3
"""A prefork resident program (--worker) in Python, standard library only.

    prefork --procs 4 --threads 8 --worker python3 examples/resident/resident.py

Each prefork worker thread starts one copy of this program and feeds it one
job at a time over the channel named by PREFORK_WORKER_FD (protocol 1: one
JSON object per line; see the README). Print freely: stdout and stderr go to
prefork's log, not to the channel.

Use it as a library, with a decorator:

    from resident import job

    @job
    def handle(job):
        return job["payload"].upper()      # the result; raise to fail

or with run(handler). A handler gets the job as a dict (id, queue,
attempt, max_attempts, priority, payload, timeout) and returns the result
(None for none; anything not a string is sent as JSON). Run as it is, this
file answers every job with its payload.

prefork sets PGAPPNAME=prefork:program:<this program's pid>: psycopg and
every libpq client name their connections by it, and prefork ends what
they leave open if it has to kill the program.
"""

import json
import os
import sys
import traceback

PROTOCOL = 1


def run(handler):
    """Serves jobs with handler until prefork closes the channel."""
    fd = int(os.environ["PREFORK_WORKER_FD"])
    dumps, loads = json.dumps, json.loads

    def send(data):
        # Plain os.write on the descriptor: socket.makefile's layers cost
        # more than the job itself for a quick one.
        data = memoryview(data)
        while data:
            data = data[os.write(fd, data):]

    send(b'{"ready": true, "protocol": %d}\n' % PROTOCOL)
    pending = b""
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return  # prefork closed the channel: the fleet stops
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()  # the start of a line still coming
        for line in lines:
            job = loads(line)
            try:
                result = handler(job)
                if result is not None and not isinstance(result, str):
                    result = dumps(result)
                answer = '{"id": %d, "ok": true, "result": %s}\n' % (job["id"], dumps(result))
            except Exception as e:  # the job fails; the program goes on
                traceback.print_exc()
                error = dumps(f"{type(e).__name__}: {e}")
                answer = '{"id": %d, "ok": false, "error": %s}\n' % (job["id"], error)
            send(answer.encode())


def job(handler):
    """Decorator: serves jobs with the decorated function (at import of the
    module being run as the program)."""
    module = sys.modules.get(handler.__module__)
    if module is not None and module.__name__ == "__main__":
        run(handler)
    return handler


if __name__ == "__main__":
    run(lambda job: job["payload"])
