// The example app's UI: plain DOM code over the plugin's JavaScript API.
import { send, cancel, hash, serveStart, serveStop } from './tidegate-api.js'

const $ = (id) => document.getElementById(id)
const state = { sources: [], transfer: null, receiver: null, inbox: null, finished: null }

const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
function size(bytes) {
  let v = bytes
  let u = 0
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u++ }
  return u === 0 ? `${bytes} B` : `${v.toFixed(1)} ${units[u]}`
}
function duration(seconds) {
  if (seconds == null) return '…'
  const m = Math.floor(seconds / 60)
  return m > 0 ? `${m} min ${seconds % 60} s` : `${seconds} s`
}
function status(el, text, kind = '') {
  el.textContent = text
  el.className = `status ${kind}`
}

function showSources() {
  const list = $('sources')
  list.replaceChildren()
  if (state.sources.length === 0) {
    const li = document.createElement('li')
    li.className = 'empty'
    li.textContent = 'No files picked'
    list.append(li)
  }
  for (const s of state.sources) {
    const li = document.createElement('li')
    li.textContent = s
    li.title = s
    list.append(li)
  }
}

async function pick(directory) {
  const picked = await window.__TAURI__.dialog.open({ multiple: !directory, directory })
  if (picked == null) return
  for (const p of [].concat(picked)) if (!state.sources.includes(p)) state.sources.push(p)
  showSources()
}

function onTransfer(e) {
  const el = $('send-status')
  if (e.event === 'started') {
    state.transfer = e.id
  } else if (e.event === 'progress') {
    const total = e.totalBytes
    $('bar').value = total ? e.doneBytes / Math.max(total, 1) : 0
    const of = total != null ? ` of ${size(total)}` : ''
    const down = e.destinations.map((d) => `\n${d.address}: ${d.state}${d.error ? ` (${d.error})` : ''}`).join('')
    status(el, `${size(e.doneBytes)}${of} · ${size(e.bytesPerSecond)}/s · ETA ${duration(e.etaSeconds)}` +
      `\n${e.filesDone} file(s) done${e.currentFile ? ` · ${e.currentFile}` : ''}${down}`)
  } else if (e.event === 'finished') {
    state.transfer = null
    $('send').disabled = false
    $('cancel').disabled = true
    const r = e.report
    if (e.error) {
      status(el, `${e.error.kind}: ${e.error.message}`, 'error')
    } else {
      $('bar').value = 1
      status(el, `Sent ${size(r.bytes)} in ${(r.elapsedMs / 1000).toFixed(1)} s, verified`, 'done')
    }
    state.finished?.(e)
  }
}

async function startSend() {
  const el = $('send-status')
  const destination = $('destination').value.trim()
  const key = $('send-key').value
  $('bar').value = 0
  try {
    $('send').disabled = true
    await send(state.sources, [destination], key ? { key } : {}, onTransfer)
    $('cancel').disabled = false
    status(el, 'Connecting…')
  } catch (err) {
    $('send').disabled = false
    status(el, `${err.kind}: ${err.message}`, 'error')
  }
}

function onServe(e) {
  const el = $('serve-status')
  if (e.event === 'activity') {
    status(el, `Receiving on ${state.receiver.address} · ${e.connections} connection(s)` +
      `\n${e.filesTotal} file(s), ${size(e.bytesTotal)} received`)
    const list = $('received')
    for (const f of e.received) {
      const li = document.createElement('li')
      li.textContent = `${f.path} (${size(f.bytes)})`
      list.prepend(li)
    }
    while (list.children.length > 200) list.lastChild.remove()
    for (const r of e.refused) {
      const li = document.createElement('li')
      li.textContent = `refused ${r.peer}: ${r.reason}`
      list.prepend(li)
    }
  } else if (e.event === 'stopped') {
    state.receiver = null
    $('serve-start').disabled = false
    $('serve-stop').disabled = true
    status(el, e.error ? `${e.error.kind}: ${e.error.message}` : 'Not receiving', e.error ? 'error' : '')
  }
}

async function startServe() {
  const el = $('serve-status')
  if (!state.inbox) return status(el, 'Choose a folder to receive into first', 'error')
  const key = $('serve-key').value
  try {
    $('serve-start').disabled = true
    state.receiver = await serveStart(state.inbox, { listen: $('listen').value.trim(), key: key || undefined }, onServe)
    $('serve-stop').disabled = false
    const phrase = state.receiver.codePhrase
    status(el, phrase ? `Receiving on ${state.receiver.address}, code phrase ${phrase}` : `Receiving on ${state.receiver.address}`)
  } catch (err) {
    $('serve-start').disabled = false
    status(el, `${err.kind}: ${err.message}`, 'error')
  }
}

$('pick-files').onclick = () => pick(false)
$('pick-folder').onclick = () => pick(true)
$('clear').onclick = () => { state.sources = []; showSources() }
$('send').onclick = startSend
$('cancel').onclick = () => state.transfer != null && cancel(state.transfer)
$('pick-inbox').onclick = async () => {
  const dir = await window.__TAURI__.dialog.open({ directory: true })
  if (dir) { state.inbox = dir; $('inbox').textContent = dir }
}
$('serve-start').onclick = startServe
$('serve-stop').onclick = () => state.receiver && serveStop(state.receiver.id)

// Smoke mode: the same buttons, driven from here, then a verdict for the app to exit with.
const { invoke } = window.__TAURI__.core
const plan = await invoke('smoke_plan')
if (plan) {
  const verdict = (ok, message) => invoke('smoke_result', { ok, message })
  try {
    if (plan.mode === 'idle') {
      await new Promise((r) => setTimeout(r, 5000))
      await verdict(true, 'idle for 5 s')
    } else {
      let to = plan.to
      if (!to) {
        state.inbox = plan.inbox
        $('listen').value = '127.0.0.1:0'
        // No passphrase: the receiver makes a code phrase, which the sender then gives.
        $('serve-key').value = ''
        await startServe()
        if (!state.receiver) throw new Error($('serve-status').textContent)
        if (!state.receiver.codePhrase) throw new Error('a receiver without a key made no code phrase')
        $('send-key').value = state.receiver.codePhrase
        to = state.receiver.address
      }
      state.sources = [plan.source]
      showSources()
      $('destination').value = to
      const finished = new Promise((resolve) => { state.finished = resolve })
      $('send').click()
      const end = await finished
      if (!end.report.success) throw new Error(`transfer failed: ${JSON.stringify(end.error)}`)
      const sendPeak = await invoke('smoke_peak')
      const received = `${plan.inbox}/generated.bin`
      const [a, b] = await hash([plan.source, received])
      if (a.blake3 == null || a.blake3 !== b.blake3 || b.bytes !== plan.bytes) {
        throw new Error(`copies differ: ${JSON.stringify([a, b])}`)
      }
      if (state.receiver) $('serve-stop').click()
      await verdict(true, `sent ${size(plan.bytes)} through the UI (peak RSS ${sendPeak.toFixed(1)} MiB by its end), BLAKE3 ${a.blake3.slice(0, 16)}… on both copies`)
    }
  } catch (err) {
    await verdict(false, err.message ?? JSON.stringify(err))
  }
}
