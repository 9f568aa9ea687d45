// Compile-only check of wsnotify.d.ts: tsc --noEmit --strict clients/types-check.ts
/// <reference lib="es2020" />
/// <reference lib="dom" />
import Default, {
  Client,
  PROTOCOL_VERSION,
  encodeSince,
  parseSince,
  claims,
  type ClientOptions,
  type Delivery,
  type Position,
  type PresenceEvent,
  type RecoveredEvent,
  type StateEvent,
  type TransportKind,
} from "./wsnotify.js";

const version: 1 = PROTOCOL_VERSION;
const Same: typeof Client = Default;

// Node's `ws` class, as its types declare it (overloaded constructor, extra options).
declare class NodeWs {
  constructor(address: null);
  constructor(address: string | URL, options?: { headers?: Record<string, string> });
  constructor(address: string | URL, protocols?: string | string[], options?: { headers?: Record<string, string> });
  readyState: number;
  send(data: string): void;
  close(code?: number): void;
}
declare class NodeEventSource {
  constructor(url: string | URL, init?: { withCredentials?: boolean });
  close(): void;
}

const options: ClientOptions = {
  url: new URL("https://notify.example.com"),
  user: "alice",
  getToken: async () => "jwt",
  rooms: new Set(["lobby"]),
  transports: ["websocket", "poll"],
  since: { "user:alice": { epoch: "3f9a0c2e11b7", offset: 5 } },
  WebSocket: NodeWs,
  EventSource: NodeEventSource,
  fetch: (url, init) => fetch(url, init),
  pingTimeout: 60_000,
  minBackoff: 500,
  maxBackoff: 30_000,
  stableAfter: 10_000,
  failuresBeforeFallback: 2,
  probeInterval: 30_000,
};
new Client({ WebSocket, EventSource, fetch }); // the browser's own
new Client({ since: "user%3Aalice~3f9a0c2e11b7~5" });

const client = new Same(options).connect();

function render(m: Delivery): string {
  switch (m.type) {
    case "chat.delivery":
      return `[${m.room}] ${m.user}: ${m.text} (${m.id} at ${m.ts})`;
    case "notification":
    case "broadcast":
      return `${m.type} ${JSON.stringify(m.data)} ${m.stream ?? ""}~${m.epoch ?? ""}~${m.offset ?? ""}`;
  }
}
const members = new Map<string, Set<string>>();
const onPresence = (p: PresenceEvent) => {
  if (p.type === "room.joined") members.set(p.room, new Set(p.users));
  else if (p.type === "room.left") members.delete(p.room);
  else if (p.type === "presence.join") members.get(p.room)?.add(p.user);
  else members.get(p.room)?.delete(p.user);
};
const onRecovered = (e: RecoveredEvent) => {
  if (!e.recovered) console.log("refetch", e.stream, e.reason, e.epoch, e.offset, e.transport);
};
const onState = ({ state, transport, delay, code }: StateEvent) => {
  const t: TransportKind = transport;
  console.log(state, t, delay?.toFixed(0), code);
};

client
  .on("message", (m) => console.log(render(m)))
  .on("presence", onPresence)
  .on("recovered", onRecovered)
  .on("state", onState)
  .on("error", (e) => console.warn(e.code, e.message, e.status, e.close))
  .off("state", onState);

client.subscribe("room:with:colons@ok").unsubscribe("lobby");
const sent: boolean = client.send("lobby", "hi");
const where: Record<string, Position> = client.positions();
const again = new Client({ since: where });
const since: string = encodeSince(parseSince("broadcast~e~1"));
const sub: string | undefined = claims("a.b.c").sub;
console.log(version, sent, since, sub, client.state, client.transport, client.token, Array.from(client.rooms));
again.close();

// @ts-expect-error: not an event
client.on("bogus", () => {});
// @ts-expect-error: not a transport
new Client({ transports: ["carrier-pigeon"] });
// @ts-expect-error: message handlers get a Delivery, not a string
client.on("message", (m: string) => m);
