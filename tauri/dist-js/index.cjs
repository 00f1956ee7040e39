'use strict';

var core = require('@tauri-apps/api/core');

// The JavaScript API of tauri-plugin-tidegate: typed wrappers over `invoke`, one per
// command, with the events each job sends through its channel.
function channel(handler) {
    const c = new core.Channel();
    if (handler)
        c.onmessage = handler;
    return c;
}
/** Starts sending files or directories to `HOST:PORT` receivers; resolves to its id at once. */
async function send(sources, destinations, options = {}, onProgress) {
    return await core.invoke('plugin:tidegate|send', {
        sources,
        destinations,
        options,
        onProgress: channel(onProgress)
    });
}
/** Cancels a transfer or a hash job; its `finished` event follows. */
async function cancel(id) {
    await core.invoke('plugin:tidegate|cancel', { id });
}
/** The running transfers. */
async function transfers() {
    return await core.invoke('plugin:tidegate|transfers');
}
/** Hashes files (BLAKE3, as b3sum prints); resolves to their roots once done. */
async function hash(paths, onProgress, options = {}) {
    return await core.invoke('plugin:tidegate|hash', {
        paths,
        options,
        onProgress: channel(onProgress)
    });
}
/**
 * Starts a receiver writing into `dir`; `listen` defaults to 127.0.0.1 on any free port.
 * Without `key` it makes a code phrase (in the result) that senders must give;
 * `insecureNoAuth` lets any sender in instead, still encrypted.
 */
async function serveStart(dir, options = {}, onEvent) {
    return await core.invoke('plugin:tidegate|serve_start', {
        dir,
        listen: options.listen,
        key: options.key,
        insecureNoAuth: options.insecureNoAuth,
        onEvent: channel(onEvent)
    });
}
/** Stops a receiver gracefully; its `stopped` event follows. */
async function serveStop(id) {
    await core.invoke('plugin:tidegate|serve_stop', { id });
}

exports.cancel = cancel;
exports.hash = hash;
exports.send = send;
exports.serveStart = serveStart;
exports.serveStop = serveStop;
exports.transfers = transfers;
