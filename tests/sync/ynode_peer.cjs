// A Node y-websocket peer for the interop tests.
// usage: node ynode_peer.cjs SERVER_URL ROOM WRITE_ID WAIT_FOR_ID
// Writes story WRITE_ID (a nested Y.Map, as the huskies server does) once synced, waits
// until story WAIT_FOR_ID arrives, prints {"saw": <that story>} and exits 0 (1 on timeout).
const Y = require('yjs')
const { WebsocketProvider } = require('y-websocket')
const WebSocket = require('ws')

const [serverUrl, room, writeId, waitForId] = process.argv.slice(2)
const doc = new Y.Doc()
const items = doc.getMap('items')
const provider = new WebsocketProvider(serverUrl, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true })

function finish (code, payload) {
  console.log(JSON.stringify(payload))
  provider.destroy()
  setTimeout(() => process.exit(code), 50)
}

function check () {
  const story = items.get(waitForId)
  if (story !== undefined) finish(0, { saw: story instanceof Y.Map ? story.toJSON() : story })
}

provider.on('sync', (synced) => {
  if (!synced || items.has(writeId)) return
  doc.transact(() => {
    const story = new Y.Map()
    story.set('story_id', writeId)
    story.set('name', 'written by node')
    story.set('stage', '3_qa')
    story.set('agent', '')
    story.set('retry_count', 2)
    story.set('blocked', false)
    story.set('depends_on', ['a', 'b'])
    story.set('claim', { node: 'node-js', epoch: 4, at: 1.5 })
    items.set(writeId, story)
  })
  check()
})
items.observe(check)
setTimeout(() => finish(1, { timeout: true, items: items.toJSON() }), 15000)
