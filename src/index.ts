export { createTurbo } from "./turbo.js";
export type { Turbo, TurboOptions, TurboDatabase } from "./turbo.js";
export type { AccessSelector } from "./delivery/revocation.js";
export { Stream } from "./streams/stream.js";
export type {
  TargetOptions,
  InsertOptions,
  ReplaceOptions,
  RemoveOptions,
  CustomActionOptions,
  BroadcastOptions,
  StreamPart,
} from "./streams/stream.js";
export { ModelStream } from "./streams/model-stream.js";
export type {
  PrimaryKeyInput,
  PrimaryKeyOf,
  StreamKeyInput,
  SaveContext,
  DeleteContext,
} from "./streams/model-stream.js";
export { BROADCAST_DEFAULTS } from "./streams/declarative.js";
export type { BroadcastMapping, BroadcastTarget } from "./streams/declarative.js";
export { domId, singularize } from "./streams/dom-id.js";
export type { Register, RegisteredDb, RegisteredActor } from "./register.js";
export { buildFrame, BUILTIN_ACTIONS } from "./frames/frame.js";
export type { FrameSpec, BuiltinAction } from "./frames/frame.js";
export { escapeHtml } from "./frames/escape.js";
export { memoryBroker, MemoryBroker } from "./brokers/memory.js";
export type { MemoryBrokerOptions } from "./brokers/memory.js";
export { redisBroker, RedisBroker } from "./brokers/redis.js";
export type { RedisBrokerOptions } from "./brokers/redis.js";
export { postgresBroker, PostgresBroker } from "./brokers/postgres.js";
export type { PostgresBrokerOptions } from "./brokers/postgres.js";
export type { Broker, BrokerEvents, ControlMessage, Published, HistoryOptions } from "./brokers/broker.js";
export type { Logger } from "./logger.js";
export type { DeliveryOptions, Transport, Authenticate } from "./delivery/options.js";
export { CloseCode } from "./delivery/websocket-connection.js";
export type { Streamable, StreamSourceOptions } from "./delivery/stream-source.js";
export type { TurboLocals } from "./delivery/page-middleware.js";
export { ChangeFeed } from "./changes/feed.js";
export { CAPTURE_DEFAULTS } from "./changes/options.js";
export { dropCaptureTriggers } from "./changes/triggers.js";
export type { FeedState } from "./changes/feed.js";
export type { CaptureOptions } from "./changes/options.js";
export * from "./errors.js";
export type { DataOptions } from "./data/options.js";
export { DATA_DEFAULTS } from "./data/options.js";
export type { DataHandlerTarget } from "./data/handler.js";
export type { FieldsOption } from "./data/fields.js";
export type { SyncedSet, SyncRows } from "./data/sync.js";
