/**
 * The PostgreSQL broker's SQL, beside its logic (postgres.ts) the way
 * redis-scripts.ts sits beside redis.ts. Every statement of one broker
 * namespace is built here from its table prefix, which the broker has
 * checked against `IDENTIFIER` (it is spliced into the SQL as a quoted name).
 */

import { batchTail, encodeBody, encodeFrames } from "./batch-wire.js";
import type { OutgoingFrame } from "./publish-batcher.js";

/** The stream of the frame row that takes the seq a watch registration reserves: no subscriber's. */
export const WATCH_MARK = "~watched";

/**
 * The notice of a registration's reserved seq, after its epoch and seq: an
 * inline batch of the one WATCH_MARK frame (empty), as a publish's notice
 * carries its frames, so listeners take the seq in order instead of reading
 * the hole from the table (and taking a pruned mark for lost frames).
 */
export const MARK_TAIL = batchTail(
  [{ stream: WATCH_MARK, frame: "" }],
  encodeFrames([{ stream: WATCH_MARK, frame: "" }]),
  "0",
);

/** A table prefix or channel name that is safe to splice into SQL as a quoted identifier. */
export const IDENTIFIER = /^[a-z_][a-z0-9_]{0,40}$/;

/** NOTIFY payloads must stay under 8000 bytes; a batch that does not fit one travels by seq range and is read from the table. */
export const NOTIFY_LIMIT = 7_900;

/** What a notice has besides its tail and its frames: `{"o":…,"n":…,"e":…,"s":…,` (the origin and the epoch are 8 characters of base64url). */
const NOTICE_OVERHEAD = 120;

/**
 * A batch as the publish statement takes it (see batch-wire.ts): the frames'
 * bytes back to back, each frame's stream and byte length, and the tail of
 * its one notice. A batch whose notice fits NOTIFY's limit travels
 * in it (`tail` is batch-wire's `batchTail`, the body follows it); a larger
 * one is only named by its seq range (`tail` null), and other processes read
 * it from the table in one query — the publishing process delivers it from
 * what it sent, so a bulk update's frames cross the wire once, not twice, and
 * the server does not copy them through its notification queue.
 */
export function encodeBatch(batch: readonly OutgoingFrame[]): {
  body: Buffer;
  streams: string;
  lengths: readonly number[];
  tail: string | null;
} {
  const streams = JSON.stringify(batch.map((f) => f.stream));
  let chars = 0;
  for (let i = 0; i < batch.length; i++) chars += batch[i]!.frame.length;
  // a UTF-16 code unit is one byte of UTF-8 at least: a batch this long cannot fit (its streams need not be indexed)
  if (NOTICE_OVERHEAD + chars > NOTIFY_LIMIT) {
    const { body, byteLengths } = encodeBody(batch);
    return { body, streams, lengths: byteLengths, tail: null };
  }
  const encoded = encodeFrames(batch);
  const { body, byteLengths } = encoded;
  const inline = batchTail(batch, encoded, encoded.streamIndexes.join(","));
  const fits = NOTICE_OVERHEAD + Buffer.byteLength(inline) + body.length <= NOTIFY_LIMIT;
  return { body, streams, lengths: byteLengths, tail: fits ? inline : null };
}

/** An int[] parameter as PostgreSQL's array text (node-postgres would quote and escape each number). */
export function intArray(values: readonly number[]): string {
  return `{${values.join(",")}}`;
}

/** The statements of one namespace (see `statements`). */
export type Statements = ReturnType<typeof statements>;

/**
 * The SQL of one broker namespace. Frames live in `<prefix>_frames`; the
 * epoch, the seq counter and the watch generation in the single row of
 * `<prefix>_meta`; each stream's floor (the newest seq pruned from it) in
 * `<prefix>_floors`, and `expired_floor` in meta is the newest seq of any
 * stream dropped whole; the watched data channels and when their watch
 * expires (server ms) in `<prefix>_watches` (see watches.ts).
 */
export function statements(prefix: string) {
  const frames = `"${prefix}_frames"`;
  const meta = `"${prefix}_meta"`;
  const floors = `"${prefix}_floors"`;
  const watches = `"${prefix}_watches"`;
  const nowMs = "(extract(epoch from clock_timestamp()) * 1000)::bigint";
  return {
    schema: `
      create table if not exists ${frames} (
        seq bigint primary key,
        stream text not null,
        frame text not null,
        at timestamptz not null default now()
      );
      create index if not exists "${prefix}_frames_stream_seq" on ${frames} (stream, seq);
      create table if not exists ${meta} (
        id smallint primary key check (id = 1),
        epoch text not null,
        seq bigint not null,
        expired_floor bigint not null default 0,
        watch_gen bigint not null default 0
      );
      create table if not exists ${floors} (stream text primary key, floor bigint not null);
      create table if not exists ${watches} (channel text primary key, until bigint not null, since bigint not null);
      -- a meta table from before watches: ALTER only then (it locks the table out for everyone)
      do $$ begin
        if not exists (select 1 from pg_attribute
                       where attrelid = '${meta}'::regclass and attname = 'watch_gen' and not attisdropped) then
          alter table ${meta} add column watch_gen bigint not null default 0;
        end if;
      end $$;`,
    // a new epoch's seqs start above every earlier one's (see EPOCH_SEQ_MARGIN)
    createEpoch: `
      insert into ${meta} (id, epoch, seq)
      values (1, $1, greatest($2::bigint, (extract(epoch from clock_timestamp()) * 10000)::bigint,
                               (select coalesce(max(seq), 0) from ${frames})))
      on conflict (id) do nothing`,
    head: `select epoch, seq::text as seq from ${meta} where id = 1`,
    // A batch of frames in one statement, one transaction: consecutive
    // seqs, one commit. The row lock taken by the update is held until
    // commit, so publishers are serialized and commit order (which is NOTIFY
    // delivery order) equals seq order. A rollback undoes the increment too,
    // so seqs have no holes. Parameters (see encodeBatch): $1 the frames'
    // streams as a JSON array, $2 the body (bytea), $3 each frame's byte
    // length in it, $4 the count, $5 the channel; its one notice: $6 its
    // opening (`{"o":<origin>,"n":<batch>,`), $7 its JSON tail. The notice is batch-wire's message for the batch (`{o, n, e, s:
    // the first seq, k, x, l}`, a newline, the frames), or, with no tail,
    // `{o, n, e, s: the last seq, c: the count}`, which listeners read from
    // the table — except the publishing process, which knows its own frames.
    // $8 and $9: the epoch and watch generation the batch's skipped data
    // events were skipped by (null: none); when they are not the meta row's,
    // nothing is written and no row returned (refused).
    publish: `
      with input as (
             select stream, (sum(len) over (order by ord) - len)::int as off, len, ord
             from rows from (json_array_elements_text($1::json), unnest($3::int[]))
                  with ordinality as i(stream, len, ord)
           ),
           m as (update ${meta} set seq = seq + $4::int
                 where id = 1 and ($8::text is null or (epoch = $8::text and watch_gen = $9::bigint))
                 returning epoch, seq - $4::int as base),
           f as (insert into ${frames} (seq, stream, frame)
                 select m.base + input.ord, input.stream, convert_from(substring($2::bytea from input.off + 1 for input.len), 'UTF8')
                 from m, input)
      select m.epoch, (m.base + 1)::text as first,
             pg_notify($5, $6::text || '"e":' || to_json(m.epoch)::text || ',"s":' ||
               case when $7::text is null then (m.base + $4::int) || ',"c":' || $4::int || '}'
                    else (m.base + 1) || ',' || $7::text || convert_from($2::bytea, 'UTF8') end) as notified
      from m`,
    // Registers watches (see WatchServer.register), after lockMeta in the
    // same transaction: $1 the channels, $2 the ttl in ms,
    // $3 the channel its notice goes to, $4 MARK_TAIL. A new channel (absent
    // or expired) restarts its history: its floor, and its watch's `since`,
    // is a reserved seq, whose frame row (stream WATCH_MARK) and notice keep
    // the seqs without holes for listeners. Its older frames stay until
    // pruned (history reads above the floor never reach them; a listener may
    // still have to read them). Expired watches go, with the floors of their
    // channels that have no frames.
    // Always taken: a registration then runs between two publishes, never
    // beside one. (Taking it only for a channel new at the lock's snapshot let
    // a channel expire between that snapshot and the statement's, and a
    // concurrent registration's generation go unseen in the answer's
    // `before`: a filter moved on past a channel it lacked.) A renewal is one
    // turn among publishes every quarter of the time to live; a subscribe
    // storm on channels held here takes none (see Watches.watch).
    lockMeta: `select 1 from ${meta} where id = 1 for update`,
    register: `
      with t as (select ${nowMs} as now),
           given as (select distinct channel from unnest($1::text[]) as g(channel)),
           fresh as (select g.channel from given g cross join t left join ${watches} w on w.channel = g.channel
                     where w.channel is null or w.until <= t.now),
           m as (update ${meta} set seq = seq + 1, watch_gen = watch_gen + 1
                 where id = 1 and exists (select 1 from fresh) returning seq, watch_gen),
           floored as (insert into ${floors} (stream, floor) select fresh.channel, m.seq from fresh, m
                       on conflict (stream) do update set floor = excluded.floor),
           marked as (insert into ${frames} (seq, stream, frame) select m.seq, '${WATCH_MARK}', '' from m),
           renewed as (insert into ${watches} (channel, until, since)
                       select g.channel, t.now + $2::bigint, coalesce(m.seq, 0) from given g cross join t left join m on true
                       on conflict (channel) do update
                       set until = greatest(${watches}.until, excluded.until),
                           since = case when ${watches}.until <= excluded.until - $2::bigint
                                        then excluded.since else ${watches}.since end
                       returning channel, since),
           expired as (delete from ${watches} w using t where w.until <= t.now and not (w.channel = any($1::text[]))
                       returning w.channel),
           unfloored as (delete from ${floors} fl using expired e
                         where fl.stream = e.channel and not exists (select 1 from ${frames} f where f.stream = e.channel))
      select meta.epoch, meta.watch_gen::text as before, coalesce(m.watch_gen, meta.watch_gen)::text as after,
             array(select channel from fresh) as fresh, (select json_object_agg(channel, since) from renewed) as since,
             case when m.seq is not null
                  then pg_notify($3, '{"e":' || to_json(meta.epoch)::text || ',"s":' || m.seq || ',' || $4::text) end as notified
      from ${meta} meta left join m on true where meta.id = 1`,
    // a checked batch whose frames were all skipped: the check alone (a row: passed)
    watchCheck: `select 1 from ${meta} where id = 1 and epoch = $1::text and watch_gen = $2::bigint`,
    // the watched channels and the generation, from one snapshot
    watched: `
      select epoch, watch_gen::text as generation,
             array(select channel from ${watches} where until > ${nowMs}) as channels
      from ${meta} where id = 1`,
    fetchRange: `select seq::text as seq, stream, frame from ${frames} where seq > $1 and seq <= $2 order by seq`,
    // read frames first, floors after: a prune in between can only raise the
    // floor, so a cursor that passes the later check saw complete frames
    historyFrames: `select seq::text as seq, stream, frame from ${frames} where stream = any($1) and seq > $2 order by seq`,
    historyFloor: `
      select epoch, seq::text as seq,
             greatest(expired_floor, (select coalesce(max(floor), 0) from ${floors} where stream = any($1)))::text as floor
      from ${meta} where id = 1`,
    sweepLock: `select pg_try_advisory_xact_lock(hashtext($1)) as locked`,
    prune: `
      with ranked as (
        select seq, at, row_number() over (partition by stream order by seq desc) as rn from ${frames}
      ), doomed as (
        delete from ${frames} f using ranked r
        where f.seq = r.seq and r.rn > $1 and (r.rn > $2 or r.at < now() - $3 * interval '1 millisecond')
        returning f.stream, f.seq
      )
      insert into ${floors} (stream, floor) select stream, max(seq) from doomed group by stream
      on conflict (stream) do update set floor = greatest(${floors}.floor, excluded.floor)`,
    expire: `
      with idle as (
        select stream, max(seq) as last from ${frames} group by stream having max(at) < now() - $1 * interval '1 millisecond'
      ), gone as (
        delete from ${frames} f using idle i where f.stream = i.stream
      ), forgotten as (
        -- a floor above the stream's frames is a watch registered since (see register): it stays
        delete from ${floors} fl using idle i where fl.stream = i.stream and fl.floor <= i.last
      )
      update ${meta} set expired_floor = greatest(expired_floor, (select coalesce(max(last), 0) from idle)) where id = 1`,
  };
}
