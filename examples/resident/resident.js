#!/usr/bin/env node
// A prefork resident program (--worker) in Node.js, standard library only.
//
//     prefork --procs 4 --threads 8 --worker node examples/resident/resident.js
//
// Each prefork worker thread starts one copy of this program and feeds it
// one job at a time over the channel named by PREFORK_WORKER_FD (protocol
// 1: one JSON object per line; see the README). console.log freely: stdout
// and stderr go to prefork's log, not to the channel.
//
// As a library: require('./resident').run(async (job) => result). A handler
// gets the job (id, queue, attempt, max_attempts, priority, payload,
// timeout) and returns the result (undefined for none; anything not a
// string is sent as JSON), or throws to fail the attempt. Run as it is,
// this file answers every job with its payload.
'use strict';

const net = require('net');
const readline = require('readline');

const PROTOCOL = 1;

async function run(handler) {
  const fd = Number(process.env.PREFORK_WORKER_FD);
  const channel = new net.Socket({ fd, readable: true, writable: true });
  const send = (message) => channel.write(JSON.stringify(message) + '\n');
  const lines = readline.createInterface({ input: channel, crlfDelay: Infinity });
  send({ ready: true, protocol: PROTOCOL });
  // The next jobs may already wait in the channel: one at a time, in order.
  for await (const line of lines) {
    const job = JSON.parse(line);
    let answer;
    try {
      let result = await handler(job);
      if (result !== undefined && result !== null && typeof result !== 'string') {
        result = JSON.stringify(result);
      }
      answer = { id: job.id, ok: true, result: result ?? null };
    } catch (e) {
      console.error(e);
      answer = { id: job.id, ok: false, error: String(e && e.message ? e.message : e) };
    }
    send(answer);
  }
  process.exit(0);
}

module.exports = { run, PROTOCOL };

if (require.main === module) {
  run((job) => job.payload);
}
